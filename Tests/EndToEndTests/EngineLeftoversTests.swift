import Foundation
import Testing
import KVCFormat
import KVScrubDaemon
#if canImport(Glibc)
import Glibc
#endif

/// What ds4 leaves behind and what ds4-agent keeps (kvc-format.md revision 3):
/// a superseded generation after an upgrade, temporaries of a store killed
/// half way, a user's saved sessions, and the files the engine deletes itself.
@Suite(.serialized) struct EngineLeftoversTests {
    /// Files of ds4 before e8e8779 (v1, ABI 0, payload version 1), stored `ageSeconds` ago.
    static func storeOldGeneration(_ dir: String, count: Int, ageSeconds: UInt64, seedBase: UInt64, reason: String = "cold") async throws -> [String] {
        let created = UInt64(Date().timeIntervalSince1970) - ageSeconds
        var names: [String] = []
        for i in 0..<count {
            let r = try await Tool.run("kvc-engine-sim", ["store", "--dir", dir, "--format", "v1", "--generation", "pr146",
                                                    "--seed", "\(seedBase + UInt64(i))", "--payload-bytes", "\(32 << 10)",
                                                    "--created-at", "\(created)", "--reason", reason])
            #expect(r.status == 0, "\(r.stderr)")
            names.append((r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) as NSString).lastPathComponent)
        }
        return names
    }

    /// A version-2 file of the other ds4-family layout (byte 20 = 3): never judged, never reclaimed.
    static func storeForeignLayout(_ dir: String) throws -> String {
        let p = try Damage.store(dir, version: 2, seed: 990, payload: 16 << 10)
        Damage.edit(p) { b in b[20] = 3; b[48] ^= 0xFF }
        return (p as NSString).lastPathComponent
    }

    @Test func anUpgrade_theDefaultGraceKeepsTheOldGenerationAndSaysWhen_graceZeroReclaimsExactlyIt() async throws {
        guard let exe = await DS4Engine.harness() else { return }
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        // Two hours before the upgrade, the old engine's checkpoints and one of ds4-agent's saves.
        let old = try await Self.storeOldGeneration(cache, count: 6, ageSeconds: 7200, seedBase: 100)
        let oldSession = try await Self.storeOldGeneration(cache, count: 1, ageSeconds: 7200, seedBase: 200, reason: "agent-session")
        let foreign = try Self.storeForeignLayout(cache)
        // Then ds4 e8e8779's own, written by its cache code.
        try await DS4Engine.run(exe, ["corpus", cache])
        let current = checkpoints(in: cache).subtracting(old + oldSession + [foreign])
        #expect(current.count == 28)

        // The default grace: nothing goes, and status says when the old generation will.
        var d: DaemonProcess? = try await DaemonProcess(root: root, extra: ["--budget-mb", "0", "--evict-interval", "1"], cacheDir: cache)
        var s = try d!.status()
        let gens = s.generations ?? []
        let oldGen = gens.first { $0.key == "1/0/1" }
        #expect(gens.first { $0.inForce }?.key == "1/2/2" && gens.first { $0.inForce }?.files == 28, "\(gens)")
        #expect(oldGen?.files == 7 && oldGen?.agentSessions == 1 && oldGen?.superseded == false, "\(gens)")
        let reclaimAt = try #require(oldGen?.reclaimAt)
        #expect(abs(reclaimAt - (Date().timeIntervalSince1970 + 22 * 3600)) < 120, "reclaimed in about 22 h")
        #expect(gens.contains { $0.key == "unknown" && $0.reclaimAt == nil })
        let text = try await Tool.run("kvscrubd", ["status", "--socket", d!.socket]).stdout
        #expect(text.contains("reclaimed in 2") && text.contains("[in force]") && text.contains("never reclaimed"), "\(text)")
        // evict-now is answered after a maintenance turn that began after it: eviction, reclaim, sweep.
        #expect(try d!.request("evict-now").ok)
        #expect(checkpoints(in: cache).count == 28 + 7 + 1)
        #expect(d!.events("superseded-reclaimed").isEmpty)
        _ = await d!.stop()
        d = nil

        // The offline plan says what a grace of 0 would take.
        let plan = try await Tool.run("kvscrubd", ["evict", "--json", "--dry-run", "--budget-mb", "100000", "--superseded-grace-hours", "0", cache])
        let victims = ((plan.json as? [String: Any])?["victims"] as? [[String: Any]]) ?? []
        #expect(Set(victims.compactMap { $0["name"] as? String }) == Set(old), "\(plan.stdout.prefix(800))")
        #expect(victims.allSatisfy { $0["cause"] as? String == "superseded" && $0["outcome"] as? String == "planned" })

        // Grace 0: exactly the old generation's checkpoints go, oldest first; the session, the unknown
        // layout and everything ds4 e8e8779 wrote stay.
        d = try await DaemonProcess(root: root, extra: ["--budget-mb", "0", "--evict-interval", "1", "--superseded-grace-hours", "0"], cacheDir: cache)
        try await waitUntil("the old generation reclaimed", timeout: 15) { checkpoints(in: cache).intersection(old).isEmpty }
        s = try d!.status()
        #expect(checkpoints(in: cache) == current.union(oldSession + [foreign]))
        #expect(s.counters.evictedSuperseded == 6)
        let reclaimed = d!.events("superseded-reclaimed")
        #expect(reclaimed.count == 6 && Set(reclaimed.compactMap { $0["file"] }) == Set(old))
        let metrics = d!.metricsText ?? ""
        #expect(metrics.contains("kvscrubd_evictions_total{cause=\"superseded\"} 6"), "\(metrics)")
        let history = try await Tool.run("kvscrubd", ["history", "--json", "--cause", "superseded", "--socket", d!.socket])
        #expect(((history.json as? [String: Any])?["events"] as? [Any])?.count == 6, "\(history.stdout.prefix(500))")
        _ = await d!.stop()
        let view = try await DS4Engine.run(exe, ["check", cache]).summary
        #expect(view["restored"] == 28 && view["wrong_bytes"] == 0, "the engine's files all restore: \(view)")
    }

    @Test func orphanedTemporaries_deadAndOldGo_liveFreshOrGrowingStay_bothNameForms() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let sha = String(repeating: "ab", count: 20)
        // A pid that is certainly gone: a child that has exited and been reaped.
        let t = Process()
        t.executableURL = URL(fileURLWithPath: "/bin/true")
        try t.run()
        await t.exited()
        let dead = t.processIdentifier
        let live = getpid()
        let twoHoursAgo = Date().addingTimeInterval(-7200)
        func make(_ name: String, bytes: Int, old: Bool) throws {
            let p = cache + "/" + name
            try Data(repeating: 7, count: bytes).write(to: URL(fileURLWithPath: p))
            if old { try FileManager.default.setAttributes([.modificationDate: twoHoursAgo], ofItemAtPath: p) }
        }
        let deadOld = "\(sha).kv.tmp.\(dead)"
        let liveOld = "\(String(repeating: "cd", count: 20)).kv.tmp.\(live)"
        let deadFresh = "\(String(repeating: "ef", count: 20)).kv.tmp.\(dead)"
        let agentOld = "\(String(repeating: "12", count: 20)).kv.tmp.Ab3xYz"
        let syspromptOld = "sysprompt.kv.tmp.QwErTy"
        let growing = "\(String(repeating: "34", count: 20)).kv.tmp.\(dead)"
        try make(deadOld, bytes: 300_000, old: true)
        try make(liveOld, bytes: 1000, old: true)
        try make(deadFresh, bytes: 1000, old: false)
        try make(agentOld, bytes: 20_000, old: true)
        try make(syspromptOld, bytes: 5_000, old: true)
        try make(growing, bytes: 1000, old: false)
        try Data("notes".utf8).write(to: URL(fileURLWithPath: cache + "/notes.tmp.old"))
        try FileManager.default.setAttributes([.modificationDate: twoHoursAgo], ofItemAtPath: cache + "/notes.tmp.old")
        // 30 s of idleness: sweeps every 7.5 s, removal on the second look.
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "0", "--evict-interval", "1", "--orphan-temp-minutes", "0.5"],
                                  cacheDir: cache)
        let grower = FileHandle(forWritingAtPath: cache + "/" + growing)!
        var removedAt: Date?
        try await waitUntil("the dead writers' old temporaries removed", timeout: 40) {
            _ = grower.seekToEndOfFile()
            grower.write(Data(repeating: 1, count: 4096)) // still being written: mtime moves
            let left = Set(try FileManager.default.contentsOfDirectory(atPath: cache))
            if left.isDisjoint(with: [deadOld, agentOld, syspromptOld]) { removedAt = Date(); return true }
            return false
        }
        try grower.close()
        let left = Set(try FileManager.default.contentsOfDirectory(atPath: cache))
        #expect(left == [liveOld, deadFresh, growing, "notes.tmp.old"], "\(left)")
        // Counted once each removal is done: the last unlink can be seen a moment before its count.
        try await waitUntil("three removals counted", timeout: 10, daemon: d) { (try d.status().counters.orphansRemoved ?? 0) >= 3 }
        let s = try d.status()
        #expect(s.counters.orphansRemoved == 3 && s.counters.orphanBytesRemoved == 325_000)
        let events = d.events("orphan-temporary-removed")
        #expect(Set(events.compactMap { $0["file"] }) == [deadOld, agentOld, syspromptOld])
        #expect(events.first { $0["file"] == deadOld }?["writer"] == "pid-\(dead)-gone")
        #expect(events.first { $0["file"] == agentOld }?["writer"] == "no-pid-in-name")
        let metrics = d.metricsText ?? ""
        #expect(metrics.contains("kvscrubd_orphan_temporaries_removed_total 3") && metrics.contains("kvscrubd_orphan_temporary_bytes_removed_total 325000"))
        let text = try await Tool.run("kvscrubd", ["status", "--socket", d.socket]).stdout
        #expect(text.contains("3 files an engine left behind removed"), "\(text)")
        _ = await d.stop()
        _ = removedAt
    }

    @Test func aSessionDirectoryUnderATinyBudget_losesNothing() async throws {
        guard let exe = await DS4Engine.harness() else { return }
        let root = TempDir()
        let sessions = root.file("kvcache")
        #expect(try await DS4Engine.run(exe, ["agent", sessions, "60"]).summary["saved"] == 65)
        let before = RealEngineTests.contents(sessions)
        let bytes = before.values.reduce(0) { $0 + $1.count }
        #expect(bytes > 1 << 20, "the sessions must exceed the 1 MiB budget: \(bytes)")
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "1", "--evict-interval", "1", "--scrub-rate-mbps", "0",
                                                      "--scrub-new-file-delay", "0"], cacheDir: sessions)
        try await waitUntil("a pass over the sessions", timeout: 60, daemon: d) { try d.status().scrub.lastPass != nil }
        _ = try d.request("evict-now")
        let s = try d.status()
        #expect(s.files == 65 && s.bytes > s.budgetBytes)
        #expect(s.counters.evictedFiles == 0 && s.counters.corruptFound == 0)
        #expect(d.events("evicted").isEmpty)
        _ = await d.stop()
        #expect(RealEngineTests.contents(sessions) == before, "a saved session was evicted, moved or changed")
        let view = try await DS4Engine.run(exe, ["agent-check", sessions]).summary
        #expect(view["loaded"] == 65 && view["refused"] == 0 && view["wrong_bytes"] == 0, "\(view)")
    }

    @Test func theEnginesOwnDeletions_areCounted_neverLoggedAsErrors() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let files = (0..<5).map { i in (try? Damage.store(cache, version: 1, seed: UInt64(300 + i), payload: 20_000)) ?? "" }
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "0"], cacheDir: cache)
        #expect(try d.status().files == 5)
        let sizes = try files.prefix(3).map { try FileStatus.of(path: $0).size }
        // The engine unlinks three (its eviction, a failed restore) and renames one away: only unlinks count.
        for f in files.prefix(3) { #expect(unlink(f) == 0) }
        try FileManager.default.moveItem(atPath: files[3], toPath: root.file("moved-away.kv"))
        try await waitUntil("the index follows", timeout: 10, daemon: d) { try d.status().files == 1 }
        let s = try d.status()
        #expect(s.engineDeletedLastDay?.files == 3 && s.engineDeletedLastDay?.bytes == sizes.reduce(0, +))
        #expect(s.counters.engineDeletedFiles == 3 && s.counters.errors == 0 && s.lastErrors.isEmpty)
        #expect(d.events("engine-deleted").count == 3)
        #expect(!d.log.contains("level=error") && !d.log.contains("error:"), "\(d.log.suffix(2000))")
        let text = try await Tool.run("kvscrubd", ["status", "--socket", d.socket]).stdout
        #expect(text.contains("deleted 3 checkpoints itself in the last day"), "\(text)")
        #expect((d.metricsText ?? "").contains("kvscrubd_engine_deleted_total 3"))
        _ = await d.stop()
    }
}

/// The packaged user unit for ds4-agent's sessions. There is no user manager on these machines
/// (no logind session, no systemd as PID 1 outside the namespaced one the system-unit tests boot),
/// so this runs what the unit runs, as a real unprivileged user with its own HOME and
/// XDG_RUNTIME_DIR, and has systemd itself verify the unit file in user mode.
@Suite(.serialized) struct AgentUserUnitTests {
    static let unit = ManPageTests.repo + "/packaging/systemd/user/kvscrubd-agent.service"

    @Test func theUserUnitVerifiesInUserMode() async throws {
        let dir = NSTemporaryDirectory() + "user-unit-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let text = try String(contentsOfFile: Self.unit, encoding: .utf8)
            .replacingOccurrences(of: "/usr/bin/kvscrubd", with: Tool.binDir + "/kvscrubd")
        try text.write(toFile: dir + "/kvscrubd-agent.service", atomically: true, encoding: .utf8)
        let r = try await Tool.runCapturing("/usr/bin/env", ["XDG_RUNTIME_DIR=\(dir)", "/usr/bin/systemd-analyze", "--user", "--man=no",
                                                       "verify", dir + "/kvscrubd-agent.service"])
        #expect(r.status == 0 && r.stderr.isEmpty, "\(r.stderr)")
        let typo = try await Tool.runCapturing("/usr/bin/env", ["XDG_RUNTIME_DIR=\(dir)", "/bin/sh", "-c",
            "sed 's/UMask=/UMsk=/' \(dir)/kvscrubd-agent.service > \(dir)/typo.service && /usr/bin/systemd-analyze --user --man=no verify \(dir)/typo.service"])
        #expect(typo.stderr.contains("Unknown key"), "the unit was not really parsed: \(typo.stderr)")
    }

    @Test func whatTheUnitRuns_asItsUser_scrubsTheSessions_andStatusFindsItWithoutOptions() async throws {
        guard let exe = await DS4Engine.harness() else { return }
        let user = "kvs-e2e-agent"
        let root = TempDir()
        chmod(root.path, 0o755)
        let home = root.file("home"), runtime = root.file("run")
        _ = try await Tool.runCapturing("/usr/sbin/useradd", ["--system", "--home-dir", home, "--create-home", "--shell", "/usr/sbin/nologin", user])
        defer { _ = Tool.runBlocking("/usr/sbin/userdel", [user]) }
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true)
        let sessions = home + "/.ds4/kvcache"
        try FileManager.default.createDirectory(atPath: sessions, withIntermediateDirectories: true)
        #expect(try await DS4Engine.run(exe, ["agent", sessions]).summary["saved"] == 5)
        #expect(try await Tool.runSystem("/bin/chown", ["-R", "\(user):", home, runtime]) == 0)
        chmod(runtime, 0o700)
        // ExecStart with the specifiers as the user manager expands them; RuntimeDirectory= and
        // StateDirectory= made as it makes them.
        let unitText = try String(contentsOfFile: Self.unit, encoding: .utf8)
        let exec = try #require(unitText.split(separator: "\n").first { $0.hasPrefix("ExecStart=") }).dropFirst("ExecStart=".count)
        let state = home + "/.local/state"
        let args = exec.replacingOccurrences(of: "%h", with: home).replacingOccurrences(of: "%S", with: state)
            .replacingOccurrences(of: "%t", with: runtime).split(separator: " ").map(String.init)
        #expect(args.first == "/usr/bin/kvscrubd")
        func asUser(_ command: [String]) -> [String] {
            ["/usr/bin/setpriv", "--reuid", user, "--regid", user, "--init-groups", "/usr/bin/env", "HOME=\(home)", "XDG_RUNTIME_DIR=\(runtime)"] + command
        }
        let mkdirs = asUser(["/bin/mkdir", "-p", runtime + "/kvscrubd", state + "/kvscrubd-agent"])
        #expect(try await Tool.runCapturing(mkdirs[0], Array(mkdirs.dropFirst())).status == 0)
        let daemon = Process()
        let full = asUser([Tool.binDir + "/kvscrubd"] + args.dropFirst())
        daemon.executableURL = URL(fileURLWithPath: full[0])
        daemon.arguments = Array(full.dropFirst())
        let log = root.file("agent.log")
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        daemon.standardError = FileHandle(forWritingAtPath: log)
        daemon.standardOutput = FileHandle.nullDevice
        try daemon.run()
        defer { if daemon.isRunning { daemon.terminate(); daemon.waitUntilExit() } }
        let status = asUser([Tool.binDir + "/kvscrubd", "status", "--json"])
        var report: [String: Any] = [:]
        try await waitUntil("kvscrubd status, as the user, with no options, reaches the user's daemon", timeout: 20) {
            let r = try await Tool.runCapturing(status[0], Array(status.dropFirst()))
            report = (r.json as? [String: Any]) ?? [:]
            return r.status == 0 && report["files"] as? Int == 5
        }
        #expect(report["cache_dir"] as? String == sessions, "\(report)")
        #expect(report["budget_bytes"] as? Int == 0)
        // Its socket is the user's alone; as root, without options, the system daemon's is asked.
        let sock = try FileStatus.of(path: runtime + "/kvscrubd/agent.sock")
        #expect(sock.isSocket)
        let scrub = asUser([Tool.binDir + "/kvscrubd", "scrub", "start", "--wait"])
        let waited = try await Tool.runCapturing(scrub[0], Array(scrub.dropFirst()))
        #expect(waited.status == 0, "a pass over the sessions, as the user: \(waited.stdout) \(waited.stderr)")
        daemon.terminate()
        await daemon.exited()
        #expect(daemon.terminationStatus == 0, "\((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        #expect(checkpoints(in: sessions).count == 4 && FileManager.default.fileExists(atPath: sessions + "/sysprompt.kv"))
        #expect(FileManager.default.fileExists(atPath: state + "/kvscrubd-agent/state.sqlite"))
    }
}
