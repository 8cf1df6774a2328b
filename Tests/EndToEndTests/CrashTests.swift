import Foundation
import KVCFormat
import KVScrubControl
@testable import KVScrubDaemon
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Crashes at every step, for real: the daemon SIGKILLed at each step of a
/// removal and of a state save (TestFaults), the engine SIGKILLed in the
/// middle of a tool-map rewrite; and disk faults: a full state file system
/// (a real tmpfs), a read-only cache (a real remount), EIO on the state
/// database (injected: see TestFaults for why).
@Suite(.serialized) struct CrashTests {
    /// Four good checkpoints and one with a damaged payload, in `cache`.
    static func populate(_ cache: String) throws -> (good: [String], corrupt: String) {
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let good = try (0..<4).map { try Damage.store(cache, version: UInt8($0 % 2 + 1), seed: UInt64(900 + $0), payload: 48 << 10) }
        let bad = try Damage.store(cache, version: 2, seed: 950, payload: 48 << 10)
        Damage.edit(bad) { $0[$0.count / 2] ^= 1 }
        return (good, String(bad.split(separator: "/").last!))
    }

    static func takenAway(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { CheckpointName.isTakenAway($0) }
    }

    static let fast = ["--budget-mb", "0", "--scrub-rate-mbps", "0", "--removal-settle-seconds", "0.2", "--scrub-new-file-delay", "0"]

    /// The state database as another process sees it (read-only), or nil when it cannot be read.
    static func savedState(_ stateDir: String) -> StateDatabase.Core? {
        try? StateDatabase.readOnly(directory: stateDir).core()
    }

    @Test(arguments: CacheDirectory.RemovalStep.allCases.map(\.rawValue) + ["state-written", "state-committed"])
    func sigkillAtEachStep_losesNothingGood_andTheRestartFinishesTheJob(step: String) async throws {
        let root = TempDir()
        let cache = root.file("cache")
        let (good, corrupt) = try Self.populate(cache)
        let crashed = try await DaemonProcess(root: root, extra: Self.fast, cacheDir: cache,
                                        environment: ["KVSCRUBD_TEST_FAULTS": "1", "KVSCRUBD_TEST_KILL_AT": step], waitForSocket: false)
        try await waitUntil("the daemon kills itself at \(step)", timeout: 30, daemon: crashed) { !crashed.process.isRunning }
        #expect(crashed.process.terminationReason == .uncaughtSignal && crashed.process.terminationStatus == SIGKILL)
        // What the crash left behind, step by step.
        let underName = FileManager.default.fileExists(atPath: cache + "/" + corrupt)
        let taken = Self.takenAway(cache)
        switch step {
        case "verdict": #expect(underName && taken.isEmpty)
        case "renamed", "inode-checked", "unlinking": #expect(!underName && taken.count == 1)
        case "state-written", "state-committed":
            // The first state save is written on the database's own queue, beside the scrub: on a busy
            // machine it can come after the removal's 0.2 s settle time, or in the middle of the removal
            // (seen once in CI). Whichever it met, the file is in one place at most.
            #expect(taken.count <= 1 && !(underName && !taken.isEmpty), "under its name: \(underName); private names: \(taken)")
        default: #expect(!underName && taken.isEmpty)
        }
        for g in good { #expect(FileManager.default.fileExists(atPath: g), "\(step): good file gone: \(g)") }

        // A plain restart settles everything: leftovers verified again, the corrupt file removed.
        let d = try await DaemonProcess(root: root, extra: Self.fast, cacheDir: cache)
        try await waitUntil("the corrupt file removed and no private name left", timeout: 30) {
            !FileManager.default.fileExists(atPath: cache + "/" + corrupt) && Self.takenAway(cache).isEmpty
        }
        try await waitUntil("nothing pending", timeout: 30, daemon: d) { (try d.status().pendingRemovals ?? 0) == 0 }
        // A file the restarted daemon removes itself is counted just after the unlink the wait above saw.
        // (A private name the crash left is settled at start-up, before the socket answers.)
        if underName { try await waitUntil("the removal counted", timeout: 30, daemon: d) { try d.status().counters.corruptRemoved >= 1 } }
        let s = try d.status()
        _ = await d.stop()
        for g in good {
            #expect(FileManager.default.fileExists(atPath: g), "\(step): good file gone after the restart: \(g)")
            #expect(try Verifier().verify(path: g).verdict == .ok)
        }
        #expect(s.counters.corruptRemoved <= s.counters.corruptFound)
        #expect(s.scrub.filesDone <= s.scrub.filesTotal)
        // The state database is whole (SQLite's own check), holds the counters, and was never moved aside.
        let saved = try #require(Self.savedState(root.file("state")))
        #expect(saved.counters.corruptRemoved == s.counters.corruptRemoved)
        let integrity = try await Tool.runCapturing("/usr/bin/sqlite3", [root.file("state") + "/state.sqlite", "PRAGMA integrity_check"])
        #expect(integrity.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "ok", "\(integrity.stderr)")
        let stateFiles = (try? FileManager.default.contentsOfDirectory(atPath: root.file("state"))) ?? []
        #expect(!stateFiles.contains { $0.contains(".damaged.") }, "\(stateFiles)")
    }

    /// The engine dies half way through a tool-map rewrite: the daemon's
    /// verdict on what it left is the engine's own on load, and a removal
    /// happens only under the removal rule.
    @Test(arguments: [("v1", "truncated"), ("v1", "trailerWritten"), ("v2", "truncated"), ("v2", "trailerWritten")])
    func engineKilledMidToolMapRewrite_daemonAgreesWithTheEngine(format: String, step: String) async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let textFile = root.file("text")
        try Data(("The prompt of an engine that will crash, " + format + " " + step).utf8).write(to: URL(fileURLWithPath: textFile))
        let stored = try await Tool.run("kvc-engine-sim", ["store", "--dir", cache, "--format", format, "--text-file", textFile,
                                                     "--payload-bytes", "\(40 << 10)", "--tool-map", "2"])
        #expect(stored.status == 0)
        let path = stored.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let killed = try await Tool.run("kvc-engine-sim", ["toolmap", "--entries", "3", "--kill-at", step, path])
        #expect(killed.status == SIGKILL, "the simulator must die at \(step)")
        // The engine's view, on a copy (PR #146's engine unlinks a v2 file it refuses).
        let copy = root.file("copy")
        try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: path, toPath: copy + "/" + (path as NSString).lastPathComponent)
        let prompt = root.file("prompt")
        try (String(contentsOfFile: textFile, encoding: .utf8) + " and more").write(toFile: prompt, atomically: true, encoding: .utf8)
        let load = try await Tool.run("kvc-engine-sim", ["load", "--dir", copy, "--format", format, "--prompt-file", prompt, "--no-touch"])
        let engineRefuses = load.status != 0
        // The daemon's view.
        let verify = try await Tool.run("kvscrubd", ["verify", "--json", path])
        let verdict = (((verify.json as? [String: Any])?["files"] as? [[String: Any]])?.first?["verdict"] as? String) ?? "?"
        #expect(engineRefuses == (verdict == "corrupt"), "engine refuses: \(engineRefuses), daemon: \(verdict) (\(load.stderr))")
        // v2 leftovers fail a CRC; v1 has no CRC to miss, and a missing or half-written map is one the
        // engine reads leniently (revision 3): a warning, and the checkpoint restores.
        #expect(verdict == (format == "v1" ? "ok" : "corrupt"))
        // Under the daemon: removed once settled if and only if corrupt.
        let d = try await DaemonProcess(root: root, extra: Self.fast, cacheDir: cache)
        if verdict == "corrupt" {
            // The file goes before the line that logs it is written: wait for both.
            try await waitUntil("the leftover removed and its removal logged", timeout: 30) {
                !FileManager.default.fileExists(atPath: path) && !d.events("corrupt-removed").isEmpty
            }
            #expect(d.events("corrupt-removed").count == 1)
        } else {
            try await waitUntil("the first pass over", timeout: 30, daemon: d) { try d.status().scrub.lastPass != nil }
            #expect(FileManager.default.fileExists(atPath: path))
        }
        _ = await d.stop()
    }

    @Test func stateFileSystemFull_isReported_keepsServing_andRecovers() async throws {
        let root = TempDir()
        let state = root.file("state")
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        #expect(try await Tool.runSystem("/bin/mount", ["-t", "tmpfs", "-o", "size=256k", "tmpfs", state]) == 0)
        defer { _ = Tool.runBlocking("/bin/umount", ["-l", state]) }
        // Fill it: ENOSPC for real.
        let filler = state + "/filler"
        let fd = open(filler, O_WRONLY | O_CREAT, 0o600)
        let block = [UInt8](repeating: 1, count: 4096)
        while block.withUnsafeBytes({ write(fd, $0.baseAddress, 4096) }) == 4096 {}
        #expect(errno == ENOSPC)
        close(fd)
        let cache = root.file("cache")
        let (good, _) = try Self.populate(cache)
        let d = try await DaemonProcess(root: root, extra: Self.fast, cacheDir: cache)
        try await waitUntil("the failure reported", timeout: 20, daemon: d) { try d.status().lastErrors.contains { $0.contains("state") } }
        let errors = try d.status().lastErrors
        #expect(errors.contains { $0.contains("database or disk is full") || $0.contains("No space left") }, "\(errors)")
        #expect(try d.request("scrub-pause").ok, "the daemon keeps answering")
        for g in good { #expect(FileManager.default.fileExists(atPath: g)) }
        #expect(try d.status().counters.corruptFound <= 1)
        // Space again: the saves held back go through (retried every 5 s), the pause with them.
        unlink(filler)
        try await waitUntil("the state database written", timeout: 30) { Self.savedState(state)?.scrub.paused == true }
        #expect(try d.request("scrub-resume").ok)
        try await waitUntil("the resume written", timeout: 30) { Self.savedState(state).map { $0.scrub.paused != true } ?? false }
        #expect(d.events("state-save-recovered").count == 1)
        // Reported once, not at every attempt (retries every 5 s, a save at every change).
        #expect(d.events("state-save-failed").count + d.events("state-db-unavailable").count <= 2, "\(d.log.suffix(3000))")
        _ = await d.stop()
        let files = (try? FileManager.default.contentsOfDirectory(atPath: state)) ?? []
        #expect(!files.contains { $0.contains(".damaged.") }, "a full disk is not damage: \(files)")
    }

    /// The state fuzz target's one finding: an empty state.json (Foundation leaked its read buffer on it).
    /// An old state file that cannot be read is set aside (state.json.unreadable), never migrated.
    @Test(arguments: ["", "{\"version\":1", "\u{0}garbage"])
    func unreadableStateFile_isReported_andTheDaemonStartsFresh(content: String) async throws {
        let root = TempDir()
        let cache = root.file("cache")
        _ = try Self.populate(cache)
        try FileManager.default.createDirectory(atPath: root.file("state"), withIntermediateDirectories: true)
        try Data(content.utf8).write(to: URL(fileURLWithPath: root.file("state") + "/state.json"))
        #expect(throws: (any Error).self) { try StateStore(directory: root.file("state")).load() }
        let d = try await DaemonProcess(root: root, extra: Self.fast, cacheDir: cache)
        #expect(d.log.contains("state file unreadable"))
        try await waitUntil("the state database written", timeout: 20) { Self.savedState(root.file("state")) != nil }
        _ = await d.stop()
        #expect(FileManager.default.fileExists(atPath: root.file("state") + "/state.json.unreadable"))
        #expect(!FileManager.default.fileExists(atPath: root.file("state") + "/state.json"))
    }

    @Test func stateWriteEIO_injected_isReported_andTheNextSaveWorks() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        _ = try Self.populate(cache)
        let d = try await DaemonProcess(root: root, extra: Self.fast, cacheDir: cache,
                                  environment: ["KVSCRUBD_TEST_FAULTS": "1", "KVSCRUBD_TEST_STATE_EIO": "1"])
        try await waitUntil("the failed save reported", timeout: 20, daemon: d) { try d.status().lastErrors.contains { $0.contains("Input/output error") } }
        // status shows when, readably, and asks a person to look.
        let text = try await Tool.run("kvscrubd", ["status", "--socket", d.socket]).stdout
        #expect(text.contains("action:    errors in the last hour"), "\(text)")
        let errorsLine = text.split(separator: "\n").first { $0.hasPrefix("errors:") } ?? ""
        #expect(errorsLine.contains(" ago (") && errorsLine.contains(" UTC): "), "\(errorsLine)")
        #expect(errorsLine.range(of: #"\b1[0-9]{9}\b"#, options: .regularExpression) == nil, "a raw Unix time: \(errorsLine)")
        #expect(try d.request("scrub-pause").ok)
        try await waitUntil("the next save written", timeout: 20) { Self.savedState(root.file("state"))?.scrub.paused == true }
        _ = await d.stop()
    }

    @Test func readOnlyCache_keepsServing_removesNothing_andRecoversWhenWritable() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        #expect(try await Tool.runSystem("/bin/mount", ["-t", "tmpfs", "-o", "size=32m", "tmpfs", cache]) == 0)
        defer { _ = Tool.runBlocking("/bin/umount", ["-l", cache]) }
        let (good, corrupt) = try Self.populate(cache)
        #expect(try await Tool.runSystem("/bin/mount", ["-o", "remount,ro", cache]) == 0)
        let d = try await DaemonProcess(root: root, extra: Self.fast, cacheDir: cache)
        try await waitUntil("the failed removal reported", timeout: 30, daemon: d) { try d.status().lastErrors.contains { $0.contains("remove corrupt") } }
        #expect(try d.request("status").ok)
        #expect(FileManager.default.fileExists(atPath: cache + "/" + corrupt))
        for g in good { #expect(FileManager.default.fileExists(atPath: g)) }
        #expect(Self.takenAway(cache).isEmpty)
        #expect(try await Tool.runSystem("/bin/mount", ["-o", "remount,rw", cache]) == 0)
        var c = ControlClient(path: d.socket)
        c.timeout = 60
        // Once writable, the daemon's own pass may get there first; either way it is removed, once, by the rule.
        let v = try c.send(ControlRequest(cmd: "scrub-now", files: [corrupt])).verdicts ?? []
        let removedByPass = v.first?.action == "none (replaced or removed meanwhile)"
            && d.events("corrupt-removed").contains { $0["file"] == corrupt }
        #expect(v.first?.action == "removed" || removedByPass, "\(v)")
        #expect(!FileManager.default.fileExists(atPath: cache + "/" + corrupt))
        #expect(try d.status().counters.corruptRemoved == 1)
        for g in good { #expect(FileManager.default.fileExists(atPath: g)) }
        _ = await d.stop()
    }
}
