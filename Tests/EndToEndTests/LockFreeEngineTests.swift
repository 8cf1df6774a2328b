import Foundation
import KVCFormat
import KVCSimulation
import KVScrubControl
import KVScrubDaemon
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The daemon next to an engine that behaves like the real one: no locks,
/// touches as one header write, tool-map rewrites as truncate, write, header
/// with a widened window between the steps (`kvc-engine-sim churn`), the
/// daemon scrubbing unthrottled with passes forced and `scrub now` aimed at
/// the files being rewritten. kvc-format.md revision 2's removal rule is what
/// keeps the good files: nothing here cooperates with the daemon.
///
/// KVSCRUBD_CHURN_SECONDS sets the churn's length (default 25 s in the suite;
/// e.g. KVSCRUBD_CHURN_SECONDS=600 swift test --filter LockFreeEngineTests).
@Suite(.serialized) struct LockFreeEngineTests {
    static var seconds: Double { Double(ProcessInfo.processInfo.environment["KVSCRUBD_CHURN_SECONDS"] ?? "") ?? 25 }

    /// Stores `count` good checkpoints as PR #146's engine writes them (v1 and v2 alternately).
    static func storeGood(_ dir: String, count: Int, seedBase: UInt64, payload: Int = 128 << 10) async throws -> [String] {
        var paths: [String] = []
        for i in 0..<count {
            let r = try await Tool.run("kvc-engine-sim", ["store", "--dir", dir, "--format", i % 2 == 0 ? "v2" : "v1", "--generation", "pr146",
                                                    "--seed", "\(seedBase + UInt64(i))", "--text-bytes", "3000",
                                                    "--payload-bytes", "\(payload)", "--tool-map", "2"])
            #expect(r.status == 0, "\(r.stderr)")
            paths.append(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        return paths
    }

    static func startChurn(_ files: [String], seconds: Double, log: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Tool.binDir + "/kvc-engine-sim")
        p.arguments = ["churn", "--duration", "\(seconds)", "--step-pause-ms", "5", "--seed", "7"] + files
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: log)
        p.standardError = FileHandle.nullDevice
        try p.run()
        return p
    }

    static func churnSummary(_ log: String) -> [String: Any] {
        ((try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: log)))) as? [String: Any]) ?? [:]
    }

    @Test func lockFreeRewrites_withTheDaemonScrubbingFlatOut_removeNoGoodFile() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let files = try await Self.storeGood(cache, count: 12, seedBase: 100)
        let d = try await DaemonProcess(root: root, extra: [
            "--budget-mb", "0", "--scrub-rate-mbps", "0", "--scrub-interval-hours", "0.0003", "--scrub-new-file-delay", "0"], cacheDir: cache)
        // The six v1 files get recorded checksums before the churn: every later verification compares them.
        try await waitUntil("the v1 files recorded", timeout: 30, daemon: d) { try d.status().checksums?.recorded == 6 }
        // The v1 files listed twice: two thirds of the rewrites land on them.
        let v1Files = files.enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
        let churn = try Self.startChurn(files + v1Files, seconds: Self.seconds, log: root.file("churn.json"))
        defer { if churn.isRunning { churn.terminate() } }
        var scrubNows = 0
        var rng = SplitMix64(seed: 3)
        while churn.isRunning {
            // Aimed at files being rewritten: every verdict must be kept or put off, never a removal.
            let picks = (0..<3).map { _ in files[Int(rng.next() % UInt64(files.count))] }
            for v in try d.scrubNow(picks) {
                #expect(v.disposition != .removed && v.disposition != .quarantined, "\(v.file): \(v.action)")
                #expect(!v.action.hasPrefix("removed") && !v.action.hasPrefix("quarantined"), "\(v.file): \(v.action)")
            }
            scrubNows += 1
            _ = try? d.request("scrub-start")
        }
        await churn.exited()
        // The files settle once the churn stops; every pending second look must then read ok.
        try await waitUntil("no removal pending", timeout: 60, daemon: d) { (try d.status().pendingRemovals ?? 0) == 0 }
        let final = try d.status()
        _ = await d.stop()
        let summary = Self.churnSummary(root.file("churn.json"))
        let rewrites = (summary["touches"] as? Int ?? 0) + (summary["toolmaps"] as? Int ?? 0)
        #expect(rewrites >= Int(2000 * Self.seconds / 25), "in-place rewrites: \(rewrites)")
        #expect((summary["toolmaps"] as? Int ?? 0) >= rewrites / 4)
        #expect((summary["errors"] as? [Any])?.isEmpty == true, "\(summary)")
        for f in files { #expect(FileManager.default.fileExists(atPath: f), "good file lost: \(f)") }
        #expect(final.counters.corruptRemoved == 0 && final.counters.corruptFound == 0)
        // Touches and tool-map rewrites never touch text or payload: the v1 records held throughout.
        #expect(final.checksums == StatusReport.Checksums(inFile: 6, recorded: 6, notYetRecorded: 0))
        let perFile = summary["perFile"] as? [String: Int] ?? [:]
        let v1Rewrites = v1Files.reduce(0) { $0 + (perFile[$1] ?? 0) }
        // Under a sanitizer (scripts/sanitize sets KVSCRUBD_UNDER_SANITIZER) the simulator itself runs several
        // times slower: 1,800 in 25 s under ThreadSanitizer, where 2,000 is the floor of a plain run.
        let floor = ProcessInfo.processInfo.environment["KVSCRUBD_UNDER_SANITIZER"] == nil ? 2000.0 : 500.0
        #expect(v1Rewrites >= Int(floor * Self.seconds / 25), "in-place rewrites of recorded v1 files: \(v1Rewrites)")
        #expect(d.events("corrupt-removed").isEmpty && d.events("corrupt-kept").isEmpty)
        // The race was real: the daemon did see half-done rewrites, and the rule put every one off.
        let seen = d.events("corrupt-suspected").count + d.events("corrupt-unconfirmed").count
        #expect(seen > 0, "the daemon never saw a rewrite half done: the test did not race")
        #expect(scrubNows >= 5)
        print("lock-free churn, \(Self.seconds) s: \(rewrites) in-place rewrites (\(summary["touches"] ?? 0) touches, \(summary["toolmaps"] ?? 0) tool maps, " +
              "\(v1Rewrites) of them on recorded v1 files), " +
              "\(scrubNows) scrub-now rounds, \(seen) half-done states seen and put off, \(final.counters.corruptRemoved) removed")
        let verify = try await Tool.run("kvscrubd", ["verify", "--json", cache])
        #expect(((verify.json as? [String: Any])?["summary"] as? [String: Int])?["ok"] == 12, "\(verify.stdout.prefix(1500))")
    }

    @Test func damageInEveryRegion_underChurn_isRemoved_onlyAfterTheSettleTime() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let churned = try await Self.storeGood(cache, count: 8, seedBase: 200)
        let d = try await DaemonProcess(root: root, extra: [
            "--budget-mb", "0", "--scrub-rate-mbps", "0", "--scrub-interval-hours", "0.0003", "--scrub-new-file-delay", "0",
            "--removal-brake", "50"], cacheDir: cache)
        let churn = try Self.startChurn(churned, seconds: 30, log: root.file("churn.json"))
        defer { if churn.isRunning { churn.terminate() } }
        // Files damaged in place, one per region each version can show, arriving while the churn runs.
        var damaged = try Damage.corruptSet(cache, version: 2, seedBase: 300)
        // One engine's directory: the churn is PR #146's, so are the damaged v1 files (revision 3
        // applies the payload rules within the running generation only).
        damaged.merge(try Damage.corruptSet(cache, version: 1, seedBase: 400, pr146: true)) { a, _ in a }
        damaged.merge(try Self.sizeDamaged(cache)) { a, _ in a }
        var changedAt: [String: Double] = [:]
        for name in damaged.keys {
            let st = try FileStatus.of(path: cache + "/" + name)
            changedAt[name] = Double(max(st.modifiedAtNanos, st.changedAtNanos)) / 1e9
        }
        var removedAt: [String: Double] = [:]
        try await waitUntil("every damaged file removed", timeout: 90) {
            let now = Date().timeIntervalSince1970
            for name in damaged.keys where removedAt[name] == nil && !FileManager.default.fileExists(atPath: cache + "/" + name) {
                removedAt[name] = now
            }
            return removedAt.count == damaged.count
        }
        await churn.exited()
        _ = await d.stop()
        let settle = 5.0 // the default removal_settle_seconds
        let delays = damaged.keys.map { removedAt[$0]! - changedAt[$0]! }.sorted()
        for name in damaged.keys {
            #expect(removedAt[name]! - changedAt[name]! >= settle, "\(name) (\(damaged[name]!)) removed before the file had settled")
        }
        let removed = Dictionary(d.events("corrupt-removed").compactMap { e in e["file"].map { ($0, e["region"] ?? "") } }) { a, _ in a }
        for (name, region) in damaged {
            #expect(removed[name] != nil, "\(name): damaged in \(region), not removed by the daemon")
        }
        for f in churned { #expect(FileManager.default.fileExists(atPath: f), "good file lost: \(f)") }
        print("damage to removal, \(delays.count) files, settle \(settle) s: p50 \(String(format: "%.2f", delays[delays.count / 2])) s, " +
              "max \(String(format: "%.2f", delays.last!)) s")
    }

    /// A v2 file cut short inside its payload (the size region).
    static func sizeDamaged(_ dir: String) throws -> [String: String] {
        let p = try Damage.store(dir, version: 2, seed: 500)
        Damage.edit(p) { $0.removeLast(20_000) }
        return [String(p.split(separator: "/").last!): "size"]
    }

    /// Revision 1's invented v2 layout (text_bytes at 48, header CRC at 64 over bytes 0..63): a
    /// foreign layout under the same magic, as a fork or a misread would present it.
    static func revision1Layout(_ path: String) {
        Damage.edit(path) { b in
            let textBytes = Array(b[64..<68])
            b.replaceSubrange(48..<52, with: textBytes)
            let crc = CRC32C.checksum(Array(b[0..<64]))
            b.replaceSubrange(64..<68, with: (0..<4).map { UInt8(truncatingIfNeeded: crc >> (8 * UInt32($0))) })
        }
    }

    /// Revision 1's layout with byte 20 = 0 reads as PR #146's with a header CRC that fails: proven
    /// damage by the contract, 30 files at once. The brake stops removals past 5 and, by default,
    /// keeps every further file where it is (removal_brake_action: keep).
    @Test func thirtyFilesInAForeignLayout_theBrakeStopsRemovals_andKeepsThemInPlace() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        var names: [String] = []
        for i in 0..<30 {
            let p = try Damage.store(cache, version: 2, seed: UInt64(600 + i), payload: 16 << 10)
            Self.revision1Layout(p)
            names.append(String(p.split(separator: "/").last!))
        }
        #expect(try Verifier(engine: .pr146).verify(path: cache + "/" + names[0]).verdict == .corrupt, "the foreign layout reads as damage")
        var d: DaemonProcess? = try await DaemonProcess(root: root, extra: [
            "--budget-mb", "0", "--scrub-rate-mbps", "0", "--removal-settle-seconds", "0.5"], cacheDir: cache)
        try await waitUntil("all 30 judged", timeout: 60) {
            let s = try d!.status()
            return s.counters.corruptFound == 30 && (s.pendingRemovals ?? 0) == 0
        }
        let s = try d!.status()
        let quarantine = root.file("state") + "/quarantine"
        let inQuarantine = Set((try? FileManager.default.contentsOfDirectory(atPath: quarantine)) ?? [])
        let inCache = checkpoints(in: cache)
        let unlinked = names.filter { !inCache.contains($0) }
        #expect(unlinked.count <= 5, "removed past the brake: \(unlinked.count)")
        #expect(inQuarantine.isEmpty, "moved out of the cache by default: \(inQuarantine.count)")
        #expect(inCache.count >= 25)
        #expect(s.brake?.engaged == true && s.brake?.heldBack == inCache.count && s.brake?.action == "keep")
        #expect(s.brake?.reason?.contains("more than the limit of 5") == true, "\(String(describing: s.brake?.reason))")
        #expect(d!.events("removal-brake-engaged").count == 1)
        #expect(d!.events("removal-brake-engaged").first?["action"] == "keep")
        #expect(d!.events("corrupt-kept").count == inCache.count)
        let text = try await Tool.run("kvscrubd", ["status", "--socket", d!.socket])
        #expect(text.stdout.hasPrefix("REMOVAL BRAKE ENGAGED"), "\(text.stdout)")
        #expect(text.stdout.contains("action:") && text.stdout.contains("kept where they are"), "\(text.stdout)")
        let metrics = try d!.request("metrics").metrics ?? ""
        #expect(metrics.contains("kvscrubd_removal_brake_engaged 1"))
        // The brake survives a restart; only an operator lifts it.
        _ = await d!.stop()
        d = nil
        d = try await DaemonProcess(root: root, extra: ["--budget-mb", "0", "--scrub-rate-mbps", "0"], cacheDir: cache)
        #expect(try d!.status().brake?.engaged == true)
        let brake = try await Tool.run("kvscrubd", ["brake", "status", "--socket", d!.socket])
        #expect(brake.status == 1 && brake.stdout.contains("REMOVAL BRAKE ENGAGED"))
        let release = try await Tool.run("kvscrubd", ["brake", "release", "--socket", d!.socket])
        #expect(release.status == 0, "\(release.stderr)")
        #expect(release.stdout.contains("released"))
        #expect(try d!.status().brake?.engaged == false)
        #expect(try await Tool.run("kvscrubd", ["brake", "status", "--socket", d!.socket]).status == 0)
    }

    /// An operator's choice: removal_brake_action quarantine moves the files past the brake out of
    /// the cache, and `brake release --restore` puts them back where their names are free.
    @Test func brakeActionQuarantine_movesFilesOut_andReleaseRestorePutsThemBack() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        var names: [String] = []
        for i in 0..<8 {
            let p = try Damage.store(cache, version: 2, seed: UInt64(650 + i), payload: 16 << 10)
            Self.revision1Layout(p)
            names.append(String(p.split(separator: "/").last!))
        }
        var d: DaemonProcess? = try await DaemonProcess(root: root, extra: [
            "--budget-mb", "0", "--scrub-rate-mbps", "0", "--removal-settle-seconds", "0.5", "--removal-brake", "2",
            "--removal-brake-action", "quarantine"], cacheDir: cache)
        try await waitUntil("all 8 judged", timeout: 60) {
            let s = try d!.status()
            return s.counters.corruptFound == 8 && (s.pendingRemovals ?? 0) == 0
        }
        let quarantine = root.file("state") + "/quarantine"
        let held = Set((try? FileManager.default.contentsOfDirectory(atPath: quarantine)) ?? [])
        #expect(held.count == 6 && checkpoints(in: cache).isEmpty, "quarantined \(held.count)")
        #expect(try d!.status().brake?.action == "quarantine")
        // The operator found the cause; a dry run keeps whatever the next looks say while the files are back.
        _ = await d!.stop()
        d = nil
        d = try await DaemonProcess(root: root, extra: ["--budget-mb", "0", "--scrub-rate-mbps", "0", "--dry-run"], cacheDir: cache)
        // One file's name taken meanwhile: the engine stored that text again.
        let taken = held.sorted()[0]
        try Data("newer".utf8).write(to: URL(fileURLWithPath: cache + "/" + taken))
        let restore = try await Tool.run("kvscrubd", ["brake", "release", "--restore", "--json", "--socket", d!.socket])
        #expect(restore.status == 0, "\(restore.stderr)")
        let outcome = (restore.json as? [String: Any])?["outcome"] as? [String: Any]
        #expect((outcome?["restored"] as? [String])?.count == 5, "\(restore.stdout)")
        #expect((outcome?["left_in_quarantine"] as? [String])?.count == 1)
        #expect(checkpoints(in: cache) == held)
        #expect(try String(contentsOfFile: cache + "/" + taken, encoding: .utf8) == "newer", "a newer file was replaced")
        #expect(Set((try? FileManager.default.contentsOfDirectory(atPath: quarantine)) ?? []) == [taken])
        #expect(try d!.status().brake?.engaged == false)
        #expect(d!.events("quarantine-restored").count == 5)
    }

    @Test func aPR146Directory_isAllOk_andTheABIFollowsTheEngine() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        _ = try await Self.storeGood(cache, count: 6, seedBase: 700, payload: 32 << 10)
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "0", "--scrub-rate-mbps", "0",
                                                                       "--scrub-new-file-delay", "0"], cacheDir: cache)
        var s = try d.status()
        #expect(s.engineAbi?.abi == 0 && s.engineAbi?.source == "newest checkpoint")
        #expect(s.incompatibleFiles == 0)
        try await waitUntil("the first pass verified every file", timeout: 30, daemon: d) { try d.status().scrub.lastPass != nil }
        let entries = try d.request("entries").entries ?? []
        #expect(entries.count == 6 && entries.allSatisfy { $0.unusable == nil && $0.verdict == "ok" }, "\(entries.map { ($0.name, $0.verdict, $0.unusable) })")
        // A shared-kvstore engine takes over the directory: its first store says ABI 2.
        let r = try await Tool.run("kvc-engine-sim", ["store", "--dir", cache, "--format", "v1", "--generation", "kvstore", "--seed", "9",
                                                "--payload-bytes", "\(32 << 10)"])
        #expect(r.status == 0)
        try await waitUntil("the latest arrival sets the ABI", timeout: 10, daemon: d) { try d.status().engineAbi?.abi == 2 }
        s = try d.status()
        #expect(s.engineAbi?.source == "latest arrival")
        #expect(s.incompatibleFiles == 6)
        let metrics = try d.request("metrics").metrics ?? ""
        #expect(metrics.contains("kvscrubd_engine_payload_abi 2"))
        #expect(metrics.contains("kvscrubd_engine_payload_abi_source{source=\"latest arrival\"} 1"))
        let text = try await Tool.run("kvscrubd", ["status", "--socket", d.socket])
        #expect(text.stdout.contains("v1 · ABI 2 · payload v2 (ds4 from e8e8779), latest arrival"), "\(text.stdout)")
        let listed = try await Tool.run("kvscrubd", ["entries", "--json", "--socket", d.socket])
        let j = listed.json as? [String: Any]
        let g = (j?["engine_abi"] as? [String: Any])?["generation"] as? [String: Any]
        #expect(g?["payload_abi"] as? Int == 2 && g?["payload_version"] as? Int == 2, "\(listed.stdout.prefix(500))")
        #expect(((j?["entries"] as? [[String: Any]]) ?? []).filter { $0["unusable"] != nil }.count == 6)
        #expect(d.events("corrupt-removed").isEmpty && checkpoints(in: cache).count == 7)
    }

    @Test func upperCaseNames_shortFiles_oversizedNewcomers_andLeftoverPrivateNames() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        // Upper-case hex: the engine accepts it, so the daemon indexes it under its own name.
        let lower = try Damage.store(cache, version: 2, seed: 800, payload: 200 << 10)
        let upperName = String(lower.split(separator: "/").last!).dropLast(3).uppercased() + ".kv"
        try FileManager.default.moveItem(atPath: lower, toPath: cache + "/" + upperName)
        // Shorter than its header says: no engine can index it; it counts with its stat size and goes first.
        let short = try Damage.store(cache, version: 2, seed: 801, payload: 400 << 10)
        Damage.edit(short) { $0.removeLast(100 << 10) }
        let shortName = String(short.split(separator: "/").last!)
        // A removal interrupted after the take-away: a good file under its private name...
        let good = try Damage.store(cache, version: 1, seed: 802, payload: 100 << 10)
        let goodName = String(good.split(separator: "/").last!)
        let goodTaken = CheckpointName.takenAwayName(for: goodName, inode: 1)
        try FileManager.default.moveItem(atPath: good, toPath: cache + "/" + goodTaken)
        // ...and a corrupt one.
        let bad = try Damage.store(cache, version: 2, seed: 803, payload: 100 << 10)
        Damage.edit(bad) { $0[$0.count / 2] ^= 1 }
        let badName = String(bad.split(separator: "/").last!)
        try FileManager.default.moveItem(atPath: bad, toPath: cache + "/" + CheckpointName.takenAwayName(for: badName, inode: 2))

        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "1", "--scrub-rate-mbps", "0", "--evict-interval", "3600"], cacheDir: cache)
        // Start-up settled the leftovers: the good one is back under its name, the corrupt one gone.
        #expect(FileManager.default.fileExists(atPath: good))
        #expect(!FileManager.default.fileExists(atPath: cache + "/" + goodTaken))
        #expect(!((try? FileManager.default.contentsOfDirectory(atPath: cache)) ?? []).contains { $0.hasPrefix(".kvscrubd-taken.") })
        #expect(d.events("removal-recovered").count == 2)
        let entries = try d.request("entries").entries ?? []
        #expect(entries.contains { $0.name == upperName && $0.unusable == nil })
        let shortEntry = try #require(entries.first { $0.name == shortName })
        #expect(shortEntry.unusable?.contains("shorter than prologue + text + payload") == true)
        #expect(shortEntry.size == (try FileStatus.of(path: short)).size, "counted with its stat size")
        #expect(shortEntry.rank == 1, "an unusable file goes first")

        // A newcomer larger than the whole 1 MiB budget evicts nothing else.
        let before = checkpoints(in: cache)
        let big = try await Tool.run("kvc-engine-sim", ["store", "--dir", cache, "--format", "v1", "--generation", "kvstore", "--seed", "5",
                                                  "--payload-bytes", "\(3 << 20)"])
        #expect(big.status == 0)
        try await waitUntil("the daemon saw the newcomer", timeout: 10, daemon: d) { !d.events("oversized-arrival").isEmpty }
        let evictResponse = try d.request("evict-now")
        #expect(evictResponse.ok)
        // Without the oversized file the rest (about 0.75 MiB) is under budget: nothing else goes.
        #expect(checkpoints(in: cache).isSuperset(of: before), "evicted: \(before.subtracting(checkpoints(in: cache)))")
        #expect(d.events("evicted").isEmpty)
    }
}
