import Foundation
import Testing
import KVCFormat
import KVCSimulation
import KVScrubControl
@testable import KVScrubDaemon
#if canImport(Glibc)
import Glibc
#endif

/// Writes checkpoints and damages them the way a disk would, region by region.
enum Damage {
    /// As the engine that writes each version does: v1 as ds4 from e8e8779 (ABI 2, payload version 2),
    /// v2 as PR #146 (ABI 0, payload version 1).
    /// `pr146`: as ds4 before e8e8779 writes v1 too (ABI 0, payload version 1).
    static func store(_ dir: String, version: UInt8, seed: UInt64, payload: UInt64 = 64 << 10, toolMap: Bool = true,
                      payloadVersion: UInt32? = nil, createdAt: UInt64? = nil, pr146: Bool? = nil) throws -> String {
        let pr146 = pr146 ?? (version == 2)
        let text = Array("checkpoint text \(seed) for version \(version) ".utf8) + Array(repeating: UInt8(ascii: "x"), count: 2000)
        var meta = CheckpointWriter.Metadata(reason: .cold, modelID: pr146 ? 0 : 1, quantBits: 4, ctxSize: 4096, tokens: 100,
                                             createdAt: createdAt ?? UInt64(Date().timeIntervalSince1970))
        meta.payloadABI = pr146 ? KVCHeader.pr146PayloadABI : KVCHeader.kvstorePayloadABI
        return try CheckpointWriter(version: version).store(
            in: dir, text: text, payload: SyntheticPayload(byteCount: payload, tokens: 100, ctxSize: 4096, seed: seed,
                                                           version: payloadVersion ?? (pr146 ? 1 : 2)),
            metadata: meta, toolMap: toolMap ? ToolMap([ToolMap.Entry(id: "call_\(seed)", dsml: "<dsml/>")]) : nil)
    }

    static func edit(_ path: String, _ change: (inout [UInt8]) -> Void) {
        var b = Array(FileManager.default.contents(atPath: path)!)
        change(&b)
        // In place, like a bad write: same inode.
        let fd = open(path, O_WRONLY | O_TRUNC)
        _ = b.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    /// One damaged file per region the version can detect; returns name -> region.
    static func corruptSet(_ dir: String, version: UInt8, seedBase: UInt64, pr146: Bool? = nil) throws -> [String: String] {
        var out: [String: String] = [:]
        let pro = version == 2 ? 68 : 52
        func add(_ region: String, _ seed: UInt64, _ change: (inout [UInt8]) -> Void) throws {
            let p = try store(dir, version: version, seed: seedBase + seed, pr146: pr146)
            edit(p, change)
            out[String(p.split(separator: "/").last!)] = region
        }
        let text = 2000 + "checkpoint text \(seedBase) for version \(version) ".utf8.count
        if version == 2 {
            try add("header", 1) { $0[13] ^= 1 }
            try add("text", 2) { $0[pro + 5] ^= 1 }
            try add("payload", 3) { $0[pro + text + 30_000] ^= 1 }
            try add("trailer", 4) { $0[$0.count - 2] ^= 1 }
        } else {
            try add("header", 1) { $0[8] = 0; $0[9] = 0; $0[10] = 0; $0[11] = 0 } // tokens = 0
            try add("name", 2) { $0[pro + 5] ^= 1 }                               // text flip: SHA-1 != name
            try add("payload", 3) { $0[pro + text] ^= 1 }                          // payload magic
            try add("size", 4) { $0.removeLast(1000 + 16 + 7 + 7) }                 // truncated into the payload
        }
        return out
    }
}

@Suite(.serialized) struct DaemonTests {
    @Test func status_andEntries_describeTheIndexedDirectory() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        for i in 0..<5 { _ = try Damage.store(cache, version: UInt8(i % 2 + 1), seed: UInt64(i)) }
        try Data("not a checkpoint".utf8).write(to: URL(fileURLWithPath: cache + "/notes.txt"))
        let d = try await DaemonProcess(root: root, extra: ["--scrub-interval-hours", "24"])
        let s = try d.status()
        #expect(s.files == 5)
        #expect(s.state == "running")
        #expect(s.bytes == checkpoints(in: cache).reduce(0) { $0 + UInt64((try! FileManager.default.attributesOfItem(atPath: cache + "/" + $1)[.size] as! NSNumber).intValue) })
        let human = try await Tool.run("kvscrubd", ["status", "--socket", d.socket])
        #expect(human.status == 0)
        for label in ["state:", "files:", "scrub:", "last pass:", "corrupt:", "evicted:", "errors:"] {
            #expect(human.stdout.contains(label), "\(label)")
        }
        let json = try await Tool.run("kvscrubd", ["status", "--json", "--socket", d.socket])
        #expect((json.json as? [String: Any])?["files"] as? Int == 5)
        let entries = try await Tool.run("kvscrubd", ["entries", "--json", "--socket", d.socket])
        let list = try #require((entries.json as? [String: Any])?["entries"] as? [[String: Any]])
        #expect(list.count == 5)
        let scores = list.map { $0["score"] as! Double }
        #expect(scores == scores.sorted())
        #expect(list.map { $0["rank"] as! Int } == Array(1...5))
        let stopped = await d.stop()
        #expect(stopped.status == 0)
        #expect(stopped.seconds < 2)
        #expect(!FileManager.default.fileExists(atPath: d.socket))
    }

    @Test(arguments: [UInt8(1), 2])
    func scrub_removesEveryCorruptFile_andNoGoodOne(version: UInt8) async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        var good: Set<String> = []
        for i in 0..<6 { good.insert(String(try Damage.store(cache, version: version, seed: 100 + UInt64(i)).split(separator: "/").last!)) }
        let bad = try Damage.corruptSet(cache, version: version, seedBase: 500)
        // v1 has no CRC: a flip inside a v1 tensor is undetectable, so that file is good and must stay.
        if version == 1 {
            let p = try Damage.store(cache, version: 1, seed: 900)
            Damage.edit(p) { $0[$0.count - 200] ^= 0xFF }
            good.insert(String(p.split(separator: "/").last!))
        }
        let d = try await DaemonProcess(root: root, extra: ["--scrub-rate-mbps", "0"])
        // Gone from the directory, then logged and counted: the unlink comes first.
        try await waitUntil("all corrupt files removed, logged and counted", timeout: 30) {
            let counted = try d.status().counters.corruptRemoved
            return checkpoints(in: cache) == good && d.events("corrupt-removed").count == bad.count && counted == UInt64(bad.count)
        }
        let removed = d.events("corrupt-removed")
        #expect(Set(removed.compactMap { $0["file"] }) == Set(bad.keys))
        for e in removed {
            #expect(e["region"] == bad[e["file"]!], "\(e)")
            if version == 2 && e["region"] != "header" {
                #expect(e["expected_crc"] != nil && e["actual_crc"] != nil && e["expected_crc"] != e["actual_crc"])
            }
        }
        let s = try d.status()
        #expect(s.counters.corruptRemoved == UInt64(bad.count))
        #expect(s.files == good.count)
        await d.stop()
    }

    @Test func dryRun_findsCorruption_butRemovesNothing() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let bad = try Damage.corruptSet(cache, version: 2, seedBase: 10)
        let d = try await DaemonProcess(root: root, extra: ["--dry-run", "--budget-mb", "0"])
        try await waitUntil("a finished pass", timeout: 30, daemon: d) { try d.status().scrub.lastPass != nil }
        #expect(checkpoints(in: cache).count == bad.count)
        #expect(d.events("would-remove").count == bad.count)
        await d.stop()
    }

    @Test func quarantine_movesCorruptFilesOut() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let bad = try Damage.corruptSet(cache, version: 2, seedBase: 20)
        let q = root.file("quarantine")
        let d = try await DaemonProcess(root: root, extra: ["--quarantine", q])
        try await waitUntil("the cache emptied", timeout: 30) { checkpoints(in: cache).isEmpty }
        #expect(checkpoints(in: q) == Set(bad.keys))
        await d.stop()
    }

    @Test func newCorruptFile_isFoundSoonAfterItArrives_withoutWaitingForAPass() async throws {
        let root = TempDir()
        let d = try await DaemonProcess(root: root, extra: ["--scrub-new-file-delay", "0.2"])
        try await waitUntil("the first (empty) pass", timeout: 10, daemon: d) { try d.status().scrub.lastPass != nil }
        // Damage it in a side directory, then rename it in, as a store would arrive.
        let side = root.file("side")
        try FileManager.default.createDirectory(atPath: side, withIntermediateDirectories: true)
        let p = try Damage.store(side, version: 2, seed: 1)
        Damage.edit(p) { $0[200] ^= 1 }
        let name = String(p.split(separator: "/").last!)
        let good = try Damage.store(side, version: 2, seed: 2)
        try FileManager.default.moveItem(atPath: p, toPath: d.cache + "/" + name)
        try FileManager.default.moveItem(atPath: good, toPath: d.cache + "/" + String(good.split(separator: "/").last!))
        try await waitUntil("the corrupt arrival removed", timeout: 10, daemon: d) { !FileManager.default.fileExists(atPath: d.cache + "/" + name) }
        #expect(checkpoints(in: d.cache).count == 1)
        #expect(try d.status().scrub.lastPass?.files == 0) // found by the arrival check, not by a pass
        await d.stop()
    }

    @Test func budget_isKeptOnArrival_andTheNewcomerIsNotTheVictim() async throws {
        let root = TempDir()
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "1"])
        var stored: [String] = []
        for i in 0..<8 {
            stored.append(String(try Damage.store(d.cache, version: 2, seed: UInt64(i), payload: 200 << 10).split(separator: "/").last!))
            let newest = stored.last!
            try await waitUntil("the budget kept", timeout: 10) {
                let s = try d.status()
                return s.bytes <= 1 << 20 && s.files == checkpoints(in: d.cache).count
            }
            #expect(FileManager.default.fileExists(atPath: d.cache + "/" + newest))
        }
        let s = try d.status()
        #expect(s.counters.evictedBudget > 0)
        #expect(d.events("evicted").allSatisfy { $0["cause"] == "budget" })
        await d.stop()
    }

    @Test func incompatibleFiles_areEvictedFirst_neverRemovedAsCorrupt() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        // Payload version 2 behind byte 20 = 0: what PR #146's touch leaves in front of ds4 e8e8779's
        // payload, a file no engine of either generation restores.
        let old = try Damage.store(cache, version: 2, seed: 1, payload: 300 << 10, payloadVersion: 2,
                                   createdAt: UInt64(Date().timeIntervalSince1970) - 3600)
        for i in 2..<5 { _ = try Damage.store(cache, version: 2, seed: UInt64(i), payload: 300 << 10) }
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "1"])
        try await waitUntil("under budget", timeout: 10, daemon: d) { try d.status().bytes <= 1 << 20 }
        #expect(!FileManager.default.fileExists(atPath: old))
        #expect(d.events("evicted").first?["cause"] == "incompatible")
        #expect(d.events("corrupt-removed").isEmpty)
        #expect(checkpoints(in: cache).count == 3)
        await d.stop()
    }

    @Test func unremovableVictim_isSkipped_andEvictionGoesOn() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        // The lowest score (fewest tokens per byte): made immutable, so unlink fails with EPERM even for root.
        let stuck = try Damage.store(cache, version: 2, seed: 1, payload: 600 << 10)
        for i in 2..<5 { _ = try Damage.store(cache, version: 2, seed: UInt64(i), payload: 300 << 10) }
        #expect(try await Tool.runSystem("/usr/bin/chattr", ["+i", stuck]) == 0)
        defer { _ = Tool.runBlocking("/usr/bin/chattr", ["-i", stuck]) }
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "1"])
        try await waitUntil("eviction past the stuck file", timeout: 10, daemon: d) { d.events("evicted").count >= 1 }
        #expect(FileManager.default.fileExists(atPath: stuck))
        #expect(d.events("evict-failed").first?["file"] == String(stuck.split(separator: "/").last!))
        #expect(try d.status().counters.errors >= 1)
        await d.stop()
    }

    @Test func sigterm_duringAScrub_exitsWithin2s_andARestartResumesThePass() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        for i in 0..<12 { _ = try Damage.store(cache, version: 2, seed: UInt64(i), payload: 1 << 20) }
        // 2 MB/s over ~12 MiB: a pass takes about 6 s.
        let d = try await DaemonProcess(root: root, extra: ["--scrub-rate-mbps", "2"])
        try await waitUntil("a few files scrubbed", timeout: 20, daemon: d) { try d.status().scrub.filesDone >= 3 }
        let before = try d.status()
        #expect(before.scrub.active)
        let stop = await d.stop()
        #expect(stop.status == 0)
        #expect(stop.seconds < 2)
        let saved = try #require(try StateDatabase.readOnly(directory: d.stateDir).core())
        #expect(saved.scrub.passStartedAt == before.scrub.passStartedAt)
        #expect(saved.scrub.filesDone >= before.scrub.filesDone)
        let again = try await DaemonProcess(root: root, extra: ["--scrub-rate-mbps", "2"])
        let resumed = try again.status()
        #expect(resumed.scrub.passStartedAt == before.scrub.passStartedAt, "the same pass goes on")
        #expect(resumed.scrub.filesDone >= saved.scrub.filesDone)
        try await waitUntil("the resumed pass finished", timeout: 30, daemon: again) { try again.status().scrub.lastPass != nil }
        let last = try #require(try again.status().scrub.lastPass)
        #expect(last.files == 12, "each file once across the restart, not the whole pass again")
        // Idle again: the rate is of reading now, so it drops to 0 (status and the metric).
        try await waitUntil("the scrub rate back to 0", timeout: 10, daemon: again) { try again.status().scrub.rateBytesPerSecond == 0 }
        #expect((again.metricsText ?? "").contains("kvscrubd_scrub_rate_bytes_per_second 0"))
        await again.stop()
    }

    @Test func scrubRate_staysNearTheLimit() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        for i in 0..<4 { _ = try Damage.store(cache, version: 2, seed: UInt64(i), payload: 5 << 20) }
        let d = try await DaemonProcess(root: root, extra: ["--scrub-rate-mbps", "8"])
        try await waitUntil("the pass finished", timeout: 30, daemon: d) { try d.status().scrub.lastPass != nil }
        let p = try #require(try d.status().scrub.lastPass)
        let rate = Double(p.bytes) / (p.endedAt - p.startedAt) / 1e6
        #expect(rate <= 8 * 1.1, "rate \(rate) MB/s")
        #expect(rate >= 8 * 0.8, "rate \(rate) MB/s")
        await d.stop()
    }

    @Test func directoryRemovedAndRecreated_isSurvived() async throws {
        let root = TempDir()
        let d = try await DaemonProcess(root: root)
        _ = try Damage.store(d.cache, version: 2, seed: 1)
        try await waitUntil("indexed", timeout: 10, daemon: d) { try d.status().files == 1 }
        try FileManager.default.removeItem(atPath: d.cache)
        try await waitUntil("noticed", timeout: 10, daemon: d) { try d.status().state.contains("waiting") }
        try FileManager.default.createDirectory(atPath: d.cache, withIntermediateDirectories: true)
        _ = try Damage.store(d.cache, version: 2, seed: 2)
        _ = try Damage.store(d.cache, version: 1, seed: 3)
        try await waitUntil("watching the new directory", timeout: 10, daemon: d) { try d.status().state == "running" && d.status().files == 2 }
        _ = try Damage.store(d.cache, version: 2, seed: 4)
        try await waitUntil("a new arrival seen", timeout: 10, daemon: d) { try d.status().files == 3 }
        #expect(d.process.isRunning)
        await d.stop()
    }

    @Test func inotifyOverflow_triggersARescan() async throws {
        let root = TempDir()
        let d = try await DaemonProcess(root: root)
        d.signal(SIGSTOP)
        // More events than the kernel queues (16384 by default) while the daemon cannot read.
        for i in 0..<17_000 {
            let fd = open(d.cache + "/noise-\(i)", O_CREAT | O_WRONLY, 0o644)
            close(fd)
        }
        let arrived = try Damage.store(d.cache, version: 2, seed: 9)
        d.signal(SIGCONT)
        try await waitUntil("a rescan", timeout: 20, daemon: d) { try d.status().counters.rescans >= 1 }
        try await waitUntil("the checkpoint indexed", timeout: 10, daemon: d) { try d.status().files == 1 }
        #expect(FileManager.default.fileExists(atPath: arrived))
        await d.stop()
    }

    @Test func sighup_reloadsTheConfig_andABadFileKeepsTheOldSettings() async throws {
        let root = TempDir()
        let conf = root.file("kvscrubd.conf")
        try "budget_mb: 100\nscrub_rate_mb_per_s: 20\n".write(toFile: conf, atomically: true, encoding: .utf8)
        let d = try await DaemonProcess(root: root, extra: ["--config", conf])
        #expect(try d.status().budgetBytes == 100 << 20)
        try "budget_mb: 200\n".write(toFile: conf, atomically: true, encoding: .utf8)
        d.signal(SIGHUP)
        try await waitUntil("reloaded", timeout: 10, daemon: d) { try d.status().budgetBytes == 200 << 20 }
        try "budget_mb: lots\n".write(toFile: conf, atomically: true, encoding: .utf8)
        d.signal(SIGHUP)
        try await waitUntil("the failure reported", timeout: 10, daemon: d) { !d.events("reload-failed").isEmpty }
        #expect(try d.status().budgetBytes == 200 << 20)
        try "budget_mb: 300\nno_such_setting: 1\n".write(toFile: conf, atomically: true, encoding: .utf8)
        d.signal(SIGHUP)
        try await waitUntil("the second failure reported", timeout: 10, daemon: d) { d.events("reload-failed").count == 2 }
        #expect(d.log.contains("no_such_setting: unknown setting"))
        #expect(try d.status().budgetBytes == 200 << 20)
        #expect(d.process.isRunning)
        await d.stop()
    }

    /// log_level is reloadable: a debug event hidden at notice shows after a reload to debug.
    @Test func reload_appliesANewLogLevel() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        let conf = root.file("kvscrubd.conf")
        try "log_level: notice\nscrub_new_file_delay_seconds: 0\nbudget_mb: 0\n".write(toFile: conf, atomically: true, encoding: .utf8)
        let d = try await DaemonProcess(root: root, extra: ["--config", conf], cacheDir: cache, logLevel: nil)
        _ = try Damage.store(cache, version: 1, seed: 41)
        try await waitUntil("the first v1 file recorded", timeout: 20, daemon: d) { try d.status().checksums?.recorded == 1 }
        #expect(d.events("checksum-recorded").isEmpty, "a debug event at log_level notice")
        #expect(!d.log.contains(" info "), "no info line at notice")
        try "log_level: debug\nscrub_new_file_delay_seconds: 0\nbudget_mb: 0\n".write(toFile: conf, atomically: true, encoding: .utf8)
        #expect(try d.request("reload").ok)
        _ = try Damage.store(cache, version: 1, seed: 42)
        try await waitUntil("the second v1 file recorded", timeout: 20, daemon: d) { try d.status().checksums?.recorded == 2 }
        try await waitUntil("its debug event logged", timeout: 10, daemon: d) { d.events("checksum-recorded").count == 1 }
        await d.stop()
    }

    @Test func badConfigAtStart_isAClearErrorAndExit2() async throws {
        let root = TempDir()
        let conf = root.file("bad.conf")
        try "budget_mb: -5\n".write(toFile: conf, atomically: true, encoding: .utf8)
        let r = try await Tool.run("kvscrubd", ["run", "--config", conf, "--cache-dir", root.file("c"), "--socket", root.file("s"), "--state-dir", root.file("st")])
        #expect(r.status == 2)
        #expect(r.stderr.contains("budget_mb"))
    }

    @Test func controlSocket_answersErrors_andAStalledClientBlocksNoOne() async throws {
        let root = TempDir()
        let d = try await DaemonProcess(root: root)
        // A client that connects, sends half a line and stalls.
        let stalled = try RawClient(path: d.socket)
        stalled.send("{\"cmd\":")
        #expect(try d.request("status").ok)
        // Malformed, unknown, then valid on one connection: errors, and it goes on.
        let c = try RawClient(path: d.socket)
        c.send("not json\n")
        #expect(c.readLine().contains("\"ok\":false"))
        c.send("{\"cmd\":\"frobnicate\"}\n")
        #expect(c.readLine().contains("unknown command"))
        c.send("{\"cmd\":\"ping\"}\n")
        #expect(c.readLine().contains("\"ok\":true"))
        // Oversized: an error reply, then the connection is closed.
        let big = try RawClient(path: d.socket)
        big.send(String(repeating: "x", count: 100_000))
        #expect(big.readLine().contains("longer than"))
        #expect(try d.request("ping").ok)
        await d.stop()
    }
}

/// A raw socket client, for requests the real client would never send.
final class RawClient {
    let fd: Int32
    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in path.utf8.enumerated() { p[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard rc == 0 else { throw Timeout(what: "connect") }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
    deinit { close(fd) }
    func send(_ s: String) { _ = s.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) } }
    private var buffered: [UInt8] = []

    /// One reply line, read in large chunks (a byte at a time, the client and
    /// not the daemon was what the concurrency test measured).
    func readLine() -> String {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if let nl = buffered.firstIndex(of: 10) {
                let line = String(decoding: buffered[..<nl], as: UTF8.self)
                buffered.removeSubrange(...nl)
                return line
            }
            let n = read(fd, &chunk, chunk.count)
            guard n > 0 else {
                defer { buffered = [] }
                return String(decoding: buffered, as: UTF8.self)
            }
            buffered += chunk[0..<n]
        }
    }
}

/// #21: a second look that is pending when the daemon stops is not forgotten until the next
/// pass: the pending names are saved, and a restarted daemon looks at them again at once.
@Suite struct PendingSecondLookTests {
    @Test func aPendingSecondLook_survivesARestart_andTheFileIsRemovedWithoutWaitingForAPass() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let good = try Damage.store(cache, version: 2, seed: 1)
        var d: DaemonProcess? = try await DaemonProcess(root: root, extra: ["--budget-mb", "0", "--scrub-new-file-delay", "0",
                                                                       "--removal-settle-seconds", "3600"], cacheDir: cache)
        let bad = try Damage.store(cache, version: 2, seed: 2)
        Damage.edit(bad) { $0[$0.count / 2] ^= 0x10 }
        try await waitUntil("the damaged arrival found and queued for its second look", timeout: 20, daemon: d!) { try d!.status().pendingRemovals == 1 }
        try await waitUntil("no pass running", timeout: 20, daemon: d!) { try !d!.status().scrub.active }
        let passes = try d!.status().counters.passesCompleted
        _ = await d!.stop()
        d = nil
        // Restarted with a short settle time and no pass due for a day: only the saved pending name brings it back.
        d = try await DaemonProcess(root: root, extra: ["--budget-mb", "0", "--removal-settle-seconds", "1"], cacheDir: cache)
        // Waits for the count, which comes after the unlink: the name is gone as soon as the file is taken away.
        try await waitUntil("the file removed after the restart", timeout: 30, daemon: d!) { try d!.status().counters.corruptRemoved == 1 }
        let s = try d!.status()
        #expect(!FileManager.default.fileExists(atPath: bad))
        #expect(!s.scrub.active && s.counters.passesCompleted == passes, "a pass, not the saved second look, found it")
        #expect(FileManager.default.fileExists(atPath: good))
        #expect(d!.events("corrupt-removed").first?["file"] == (bad as NSString).lastPathComponent)
        _ = await d!.stop()
    }
}

/// #21: a stopping daemon drains its control connections: a request in flight is answered before the
/// connection closes, and nothing more is read.
@Suite struct ControlDrainTests {
    @Test func aStoppingDaemon_answersTheRequestInFlight_thenClosesTheConnection() async throws {
        let root = TempDir()
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "0", "--scrub-new-file-delay", "3600", "--removal-settle-seconds", "2"])
        let path = try Damage.store(d.cache, version: 2, seed: 5)
        Damage.edit(path) { $0[$0.count / 2] ^= 1 }
        let c = try RawClient(path: d.socket)
        c.send("{\"cmd\":\"scrub-now\",\"files\":[\"\((path as NSString).lastPathComponent)\"]}\n")
        // The first look found it corrupt; the reply now waits out the settle time before the second.
        try await waitUntil("scrub now in flight", timeout: 10, daemon: d) { !d.events("corrupt-suspected").isEmpty }
        d.signal(SIGTERM)
        // Everything the daemon sends until it closes the connection (the socket's 5 s receive timeout bounds it).
        let fd = c.fd
        let received = await withCheckedContinuation { (k: CheckedContinuation<[UInt8], Never>) in
            DispatchQueue.global().async {
                var all: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 65536)
                while true {
                    let n = read(fd, &chunk, chunk.count)
                    guard n > 0 else { break }
                    all += chunk[0..<n]
                }
                k.resume(returning: all)
            }
        }
        withExtendedLifetime(c) {}
        let lines = String(decoding: received, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        let reply = String(lines.first ?? "")
        let response = try? JSONDecoder().decode(ControlResponse.self, from: Data(reply.utf8))
        #expect(response?.ok == true && response?.verdicts?.first?.disposition == .removed, "the reply in flight: '\(reply)'")
        #expect(lines.count == 2 && lines[1].isEmpty, "one reply, then the connection closes: \(lines.count) lines")
        await d.process.exited()
        #expect(d.process.terminationStatus == 0)
        #expect(!FileManager.default.fileExists(atPath: path))
    }
}
