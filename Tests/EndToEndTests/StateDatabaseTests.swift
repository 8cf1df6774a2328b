import Foundation
import KVCFormat
import KVCSimulation
import KVScrubControl
@testable import KVScrubDaemon
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Recorded checksums for v1 files, and the state database that keeps them,
/// with a real daemon: damage after recording is found and removed under the
/// removal rule, `history` and `status -v` report it, `verify --recorded`
/// finds it offline; state.json is migrated once; a deleted, truncated or
/// garbage database is reported, replaced, and costs no file.
@Suite(.serialized) struct StateDatabaseTests {
    static let fast = ["--budget-mb", "0", "--scrub-rate-mbps", "0", "--removal-settle-seconds", "0.2", "--scrub-new-file-delay", "0"]

    static func db(_ stateDir: String) -> StateDatabase.ReadOnly? { try? StateDatabase.readOnly(directory: stateDir) }

    static func recordCount(_ stateDir: String) -> Int { (try? db(stateDir)?.records().count) ?? -1 }

    /// Three v1 files and one v2, all sound.
    static func populate(_ cache: String) throws -> (v1: [String], v2: String) {
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let v1 = try (0..<3).map { try Damage.store(cache, version: 1, seed: UInt64(700 + $0), payload: 96 << 10) }
        // Another generation (PR #146's), stored an hour earlier: the v1 files are the newest, so their generation
        // is the one in force and they are the ones verified and recorded. Stored "now", it was the newest
        // whenever a second ticked over between the stores, the v1 files were incompatible and never recorded
        // (2 runs in about 15 once the suite ran its tests side by side).
        let v2 = try Damage.store(cache, version: 2, seed: 710, payload: 96 << 10, createdAt: UInt64(Date().timeIntervalSince1970) - 3600)
        return (v1, v2)
    }

    /// A daemon over `populate`'s files, once all three v1 files are recorded, in memory and in the database.
    static func startRecorded(_ root: TempDir, environment: [String: String] = [:])
        async throws -> (d: DaemonProcess, cache: String, state: String, v1: [String], v2: String) {
        let cache = root.file("cache")
        let state = root.file("state")
        let (v1, v2) = try populate(cache)
        let d = try await DaemonProcess(root: root, extra: fast, cacheDir: cache, environment: environment)
        try await waitUntil("every v1 file recorded", timeout: 30, daemon: d) { try d.status().checksums?.recorded == 3 }
        try await waitUntil("the records in the database", timeout: 20) { recordCount(state) == 3 }
        return (d, cache, state, v1, v2)
    }

    @Test func v1PayloadFlippedAfterRecording_isFound_removedUnderTheRule_andInTheHistory() async throws {
        let root = TempDir()
        let (d, cache, state, v1, v2) = try await Self.startRecorded(root)
        let k = try #require(try d.status().checksums)
        #expect(k == StatusReport.Checksums(inFile: 1, recorded: 3, notYetRecorded: 0))
        let entries = try d.request("entries").entries ?? []
        #expect(entries.filter { $0.checksums == "recorded" }.count == 3 && entries.filter { $0.checksums == "crc32c" }.count == 1)

        // A bit flips in the middle of one v1 payload, in place: structure checks cannot see it.
        let victim = v1[1]
        let name = (victim as NSString).lastPathComponent
        let h = try CacheEntry.read(path: victim).header!
        let at = h.prologueSize + Int(h.textBytes) + Int(h.payloadBytes) / 2
        Damage.edit(victim) { $0[at] ^= 0x04 }
        let plain = try await Tool.run("kvscrubd", ["verify", "--json", victim])
        #expect(plain.status == 0, "without the record, structure alone passes it")
        // Offline, with the daemon's records (read-only, while it runs).
        let offline = try await Tool.run("kvscrubd", ["verify", "--recorded", "--state-dir", state, "--json", cache])
        #expect(offline.status == 1, "\(offline.stdout)")
        let files = ((offline.json as? [String: Any])?["files"] as? [[String: Any]]) ?? []
        let names = files.map { ((($0["path"] as? String) ?? "") as NSString).lastPathComponent }
        let verdicts = Dictionary(zip(names, files).map { ($0, $1) }, uniquingKeysWith: { a, _ in a })
        #expect(verdicts[name]?["verdict"] as? String == "corrupt")
        #expect(verdicts[name]?["checksums"] as? String == "recorded")
        #expect(verdicts[(v1[0] as NSString).lastPathComponent]?["checksums"] as? String == "recorded")
        #expect(verdicts[(v2 as NSString).lastPathComponent]?["checksums"] as? String == "crc32c")

        // The daemon's next pass finds it, and the removal rule removes it.
        #expect(try d.request("scrub-start").ok)
        try await waitUntil("the damaged v1 file removed and logged", timeout: 30) {
            !FileManager.default.fileExists(atPath: victim) && !d.events("corrupt-removed").isEmpty
        }
        let removed = try #require(d.events("corrupt-removed").first)
        #expect(removed["file"] == name && removed["region"] == "payload")
        #expect(!d.events("corrupt-suspected").isEmpty, "removed only after the rule's second look")
        for f in v1 where f != victim { #expect(FileManager.default.fileExists(atPath: f)) }
        #expect(FileManager.default.fileExists(atPath: v2))

        // The history says what, when and why; status -v lists it.
        let hist = try await Tool.run("kvscrubd", ["history", "--socket", d.socket, "--json"])
        #expect(hist.status == 0, "\(hist.stderr)")
        let events = ((hist.json as? [String: Any])?["events"] as? [[String: Any]]) ?? []
        #expect(events.count == 1, "\(hist.stdout)")
        #expect(events.first?["action"] as? String == "removed" && events.first?["cause"] as? String == "corrupt")
        #expect(events.first?["region"] as? String == "payload")
        let detail = (events.first?["detail"] as? String) ?? ""
        #expect(detail.contains("differs from the checksum recorded on"), "\(detail)")
        #expect(events.first?["expected_crc"] != nil && events.first?["actual_crc"] != nil)
        #expect(try await Tool.run("kvscrubd", ["history", "--socket", d.socket, "--cause", "budget", "--json"]).stdout.contains("\"events\":[]"))
        let text = try await Tool.run("kvscrubd", ["history", "--socket", d.socket, "--since", "1h"])
        #expect(text.stdout.contains(name) && text.stdout.contains("removed"), "\(text.stdout)")
        let bad = try await Tool.run("kvscrubd", ["history", "--socket", d.socket, "--cause", "sunspots"])
        #expect(bad.status != 0 && bad.stderr.contains("--cause"))
        // The daemon checks the cause too (a client other than the CLI), and the known ones select.
        let refused = try ControlClient(path: d.socket).send(ControlRequest(cmd: "history", cause: "sunspots"))
        #expect(!refused.ok && (refused.error ?? "").contains("unknown cause 'sunspots'"), "\(String(describing: refused.error))")
        let corrupt = try ControlClient(path: d.socket).send(ControlRequest(cmd: "history", cause: "corrupt")).history ?? []
        #expect(!corrupt.isEmpty && corrupt.allSatisfy { $0.cause == .corrupt })
        let verbose = try await Tool.run("kvscrubd", ["status", "--socket", d.socket, "-v"])
        #expect(verbose.stdout.contains("last corrupt files removed or quarantined") && verbose.stdout.contains(name), "\(verbose.stdout)")
        #expect(verbose.stdout.contains("2 v1 with a recorded checksum"), "\(verbose.stdout)")
        // The removed file's record goes with it.
        try await waitUntil("the record dropped", timeout: 20) { Self.recordCount(state) == 2 }
        let metrics = try d.request("metrics").metrics ?? ""
        #expect(metrics.contains("kvscrubd_checksum_protected_files{source=\"recorded\"} 2"), "\(metrics)")
        _ = await d.stop()
        #expect(try Self.db(state)?.historyCount() == 1)
    }

    @Test func aReplacedV1File_getsANewRecord_andIsNeverJudgedByTheOldOne() async throws {
        let root = TempDir()
        let (d, cache, state, v1, _) = try await Self.startRecorded(root)
        let name = (v1[0] as NSString).lastPathComponent
        let old = try #require(try Self.db(state)?.records()[name])
        // The engine stores the same text again with another payload: a new inode renamed over the name.
        let text = Array("checkpoint text 700 for version 1 ".utf8) + Array(repeating: UInt8(ascii: "x"), count: 2000)
        _ = try CheckpointWriter(version: 1).store(
            in: cache, text: text, payload: SyntheticPayload(byteCount: 50 << 10, tokens: 100, ctxSize: 4096, seed: 9999),
            metadata: .init(reason: .cold, modelID: 1, quantBits: 4, ctxSize: 4096, tokens: 100, createdAt: UInt64(Date().timeIntervalSince1970) + 5),
            toolMap: nil)
        try await waitUntil("the new file recorded", timeout: 30) {
            guard let r = try Self.db(state)?.records()[name] else { return false }
            return r.key != old.key
        }
        #expect(try Self.db(state)?.records()[name]?.payloadCRC != old.payloadCRC)
        #expect(try d.request("scrub-start").ok)
        try await waitUntil("a pass over", timeout: 30, daemon: d) { try d.status().scrub.lastPass.map { $0.files >= 4 } ?? false }
        let s = try d.status()
        #expect(s.counters.corruptFound == 0)
        #expect(s.checksums?.recorded == 3)
        _ = await d.stop()
        for f in v1 { #expect(FileManager.default.fileExists(atPath: f)) }
    }

    @Test func stateJSON_isMigratedOnce_andLeftAsMigrated() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        let state = root.file("state")
        _ = try Self.populate(cache)
        var counters = DaemonCounters()
        counters.corruptFound = 7
        counters.corruptRemoved = 5
        counters.passesCompleted = 3
        counters.evictedBudget = 11
        let evicted = String(repeating: "ab", count: 20) + ".kv"
        let record = StateStore.Record(scrub: ScrubProgress(), counters: counters,
                                       recentEvictions: [evicted: .init(at: Date().timeIntervalSince1970 - 60, bytes: 4096)])
        try StateStore(directory: state).save(record)
        let d = try await DaemonProcess(root: root, extra: Self.fast, cacheDir: cache)
        let s = try d.status()
        #expect(s.counters.corruptFound == 7 && s.counters.corruptRemoved == 5 && s.counters.evictedBudget == 11)
        #expect(s.counters.passesCompleted >= 3)
        #expect(d.events("state-migrated").count == 1)
        #expect(!FileManager.default.fileExists(atPath: state + "/state.json"))
        #expect(FileManager.default.fileExists(atPath: state + "/state.json.migrated"))
        _ = await d.stop()
        // The regret window came along.
        let evictions = try await Tool.runCapturing("/usr/bin/sqlite3", [state + "/state.sqlite", "SELECT name FROM recent_eviction"])
        #expect(evictions.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == evicted, "\(evictions)")
        // A second start reads the database, and migrates nothing.
        let again = try await DaemonProcess(root: root, extra: Self.fast, cacheDir: cache)
        #expect(try again.status().counters.corruptFound == 7)
        #expect(again.events("state-migrated").isEmpty)
        _ = await again.stop()
        let core = try #require(try Self.db(state)?.core())
        #expect(core.counters.evictedBudget == 11)
    }

    /// The database damaged between two runs: moved aside, reported, a new one
    /// started; the records are taken again and no file is lost.
    @Test(arguments: ["truncated", "garbage", "deleted"])
    func aDamagedDatabaseAtStartUp_isMovedAside_andTheRecordsAreTakenAgain(damage: String) async throws {
        let root = TempDir()
        let (first, cache, state, v1, v2) = try await Self.startRecorded(root)
        _ = await first.stop()
        let path = state + "/state.sqlite"
        switch damage {
        case "truncated":
            let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int
            #expect(truncate(path, off_t(size / 2)) == 0)
        case "garbage":
            var rng = SystemRandomNumberGenerator()
            try Data((0..<16384).map { _ in UInt8.random(in: 0...255, using: &rng) }).write(to: URL(fileURLWithPath: path))
        default:
            for s in ["", "-wal", "-shm"] { unlink(path + s) }
        }
        let d = try await DaemonProcess(root: root, extra: Self.fast, cacheDir: cache)
        #expect(try d.request("status").ok)
        if damage != "deleted" {
            #expect(d.events("state-db-damaged").count == 1, "\(d.log.suffix(2000))")
            let aside = ((try? FileManager.default.contentsOfDirectory(atPath: state)) ?? []).filter { $0.hasPrefix("state.sqlite.damaged.") }
            #expect(!aside.isEmpty)
        }
        try await waitUntil("the v1 files recorded again", timeout: 30, daemon: d) { try d.status().checksums?.recorded == 3 }
        try await waitUntil("the new database holds them", timeout: 20) { Self.recordCount(state) == 3 }
        let s = try d.status()
        #expect(s.counters.corruptFound == 0)
        _ = await d.stop()
        for f in v1 + [v2] { #expect(FileManager.default.fileExists(atPath: f)) }
    }

    /// Deleted under the running daemon: the next save notices (the inode is gone) and
    /// writes a new database from memory, records and all.
    @Test func theDatabaseDeletedWhileRunning_isWrittenAgainFromMemory() async throws {
        let root = TempDir()
        let (d, _, state, v1, _) = try await Self.startRecorded(root)
        for s in ["", "-wal", "-shm"] { unlink(state + "/state.sqlite" + s) }
        #expect(try d.request("scrub-pause").ok)
        try await waitUntil("a new database with the pause and the records", timeout: 20) {
            (try? Self.db(state)?.core()?.scrub.paused) == true && Self.recordCount(state) == 3
        }
        #expect(try d.status().lastErrors.contains { $0.contains("deleted or replaced") })
        _ = await d.stop()
        for f in v1 { #expect(FileManager.default.fileExists(atPath: f)) }
    }
}

extension StateDatabaseTests {
    /// Overwritten with garbage in place under the running daemon (same inodes): the next
    /// write meets it, the file is moved aside, and a new one is written from memory.
    @Test func garbageWrittenOverTheDatabaseWhileRunning_isReplacedFromMemory() async throws {
        let root = TempDir()
        // The daemon checks its database (PRAGMA quick_check) every minute; here every second.
        let (d, _, state, v1, v2) = try await Self.startRecorded(root, environment: ["KVSCRUBD_TEST_FAULTS": "1", "KVSCRUBD_TEST_DB_CHECK_SECONDS": "1"])
        let path = state + "/state.sqlite"
        // The database and its write-ahead log, in place (the shared-memory index, which SQLite
        // maps, is left alone: truncating a mapped file kills any process with SIGBUS).
        var rng = SystemRandomNumberGenerator()
        for file in [path, path + "-wal"] {
            let size = try FileManager.default.attributesOfItem(atPath: file)[.size] as! Int
            let fd = open(file, O_WRONLY)
            let junk = (0..<max(size, 8192)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            #expect(junk.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } == junk.count)
            close(fd)
        }
        // Saves go on; at the latest a pass's progress makes one.
        #expect(try d.request("scrub-pause").ok)
        #expect(try d.request("scrub-resume").ok)
        #expect(try d.request("scrub-start").ok)
        try await waitUntil("a sound database with the records again", timeout: 30) { Self.recordCount(state) == 3 }
        #expect(try d.request("status").ok)
        #expect(d.events("state-db-damaged").count == 1, "\(d.log.suffix(3000))")
        #expect(try d.status().lastErrors.contains { $0.contains("state database damaged, moved to") })
        _ = await d.stop()
        let integrity = try await Tool.runCapturing("/usr/bin/sqlite3", [path, "PRAGMA integrity_check"])
        #expect(integrity.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "ok", "\(integrity)")
        for f in v1 + [v2] { #expect(FileManager.default.fileExists(atPath: f)) }
    }
}
