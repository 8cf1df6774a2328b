import Foundation
import Testing
import KVCFormat
import KVCSimulation
import KVScrubDaemon
#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized) struct EvictionPolicyTests {
    static func store(_ dir: String, text: String, reason: KVCReason, tokens: UInt32, payload: UInt64) throws -> String {
        try CheckpointWriter(version: 2).store(
            in: dir, text: Array(text.utf8), payload: SyntheticPayload(byteCount: payload, tokens: tokens, ctxSize: 4096, seed: UInt64(text.count)),
            metadata: .init(reason: reason, modelID: 1, quantBits: 4, ctxSize: 4096, tokens: tokens, createdAt: UInt64(Date().timeIntervalSince1970)))
    }

    /// The engine's pre-store rule, applied by the daemon on arrival: a
    /// continued waypoint the newcomer extends drops to 5% of its score.
    @Test func arrival_supersedesTheContinuedWaypointItExtends() async throws {
        let root = TempDir()
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "1", "--evict-interval", "3600"])
        let base = "<|System|>shared system prompt<|User|>first question<|Assistant|>first answer"
        // A: the waypoint, dense (many tokens per byte). B: unrelated, a third as dense: without the
        // supersede rule B would go first; with it A scores 0.05x and goes instead.
        let a = try Self.store(d.cache, text: base, reason: .continued, tokens: 30_000, payload: 400 << 10)
        let b = try Self.store(d.cache, text: "<|System|>another conversation entirely", reason: .continued, tokens: 10_000, payload: 400 << 10)
        try await waitUntil("both indexed", timeout: 10, daemon: d) { try d.status().files == 2 }
        let c = try Self.store(d.cache, text: base + "<|User|>second question", reason: .continued, tokens: 30_000, payload: 400 << 10)
        // Wait for the eviction itself: "two files, under budget" is also true before c is even seen.
        try await waitUntil("an eviction, under budget", timeout: 10) {
            let s = try d.status()
            return s.counters.evictedBudget == 1 && s.bytes <= 1 << 20 && s.files == 2
        }
        #expect(!FileManager.default.fileExists(atPath: a), "the superseded waypoint goes")
        #expect(FileManager.default.fileExists(atPath: b))
        #expect(FileManager.default.fileExists(atPath: c), "the newcomer is never its own victim")
        await d.stop()
    }

    /// cachefilesd-style culling on a real (small) file system: below the start
    /// threshold the daemon culls until the stop threshold is free, and between
    /// the two it leaves the cache alone.
    @Test func freeSpace_cullsBelowStart_untilStop_withHysteresis() async throws {
        let root = TempDir()
        let mnt = root.file("fs")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        #expect(try await Tool.runSystem("/bin/mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt]) == 0)
        defer { _ = Tool.runBlocking("/bin/umount", ["-l", mnt]) }
        let cache = mnt + "/cache"
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        func freePercent() -> Double {
            var s = statvfs()
            statvfs(cache, &s)
            return Double(s.f_bavail) / Double(s.f_blocks) * 100
        }
        // Fill to about 25% free, below the start threshold, before the daemon starts: filling while
        // it runs races its culling (a cull that begins mid-fill ends at 50 % of a fuller disk, and
        // the rest of the fill then leaves it between the thresholds, where it rightly does nothing).
        var i = 0
        while freePercent() > 26 {
            _ = try Self.store(cache, text: "fill \(i)", reason: .cold, tokens: 100, payload: 1 << 20)
            i += 1
        }
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "0", "--free-space-start-percent", "30",
                                                      "--free-space-stop-percent", "50", "--evict-interval", "1"], cacheDir: cache)
        do { try await waitUntil("culled to the stop threshold", timeout: 30) { freePercent() >= 50 } } catch {
            Issue.record("\(error); free \(freePercent())%; daemon log:\n\(d.log.suffix(4000))")
            throw error
        }
        #expect(freePercent() < 60, "culls to the stop threshold, not much further")
        let culled = d.events("evicted").count
        #expect(culled > 0 && d.events("evicted").allSatisfy { $0["cause"] == "free-space" })
        // Between the thresholds (about 40% free): nothing is culled.
        while freePercent() > 40 {
            _ = try Self.store(cache, text: "more \(i)", reason: .cold, tokens: 100, payload: 1 << 20)
            i += 1
        }
        try await Task.sleep(for: .seconds(3)) // three evict ticks (1 s) between the thresholds: none may cull
        #expect(d.events("evicted").count == culled, "hysteresis: no culling between the thresholds")
        await d.stop()
    }

    @Test func scrubThread_runsInTheIdleIOClass_theThreadsAtLowCPUPriority_andTheSocketIs0660() async throws {
        let root = TempDir()
        let d = try await DaemonProcess(root: root)
        var st = stat()
        #expect(lstat(d.socket, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o660)
        let pid = d.process.processIdentifier
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")
        let scrub = tasks.first { (try? String(contentsOfFile: "/proc/\(pid)/task/\($0)/comm", encoding: .utf8))?.hasPrefix("kvscrubd-scrub") == true }
        let tid = try #require(scrub, "no thread named kvscrubd-scrub")
        let r = try Tool.runOutput("/usr/bin/ionice", ["-p", tid])
        #expect(r.trimmingCharacters(in: .whitespacesAndNewlines) == "idle", "ionice says \(r)")
        // Each thread's nice value (field 19 of its stat; the fields after the name's closing parenthesis
        // start at field 3): the scrub below the engine (10), the index at its priority (0).
        func nice(_ thread: String) throws -> Int? {
            let tid = tasks.first { (try? String(contentsOfFile: "/proc/\(pid)/task/\($0)/comm", encoding: .utf8))?.hasPrefix(thread) == true }
            let stat = try String(contentsOfFile: "/proc/\(pid)/task/\(try #require(tid, "no thread \(thread)"))/stat", encoding: .utf8)
            let fields = stat[stat.index(after: try #require(stat.lastIndex(of: ")")))...].split(separator: " ")
            return Int(fields[16])
        }
        #expect(try nice("kvscrubd-scrub") == 10)
        #expect(try nice("kvscrubd-watch") == 0)
        await d.stop()
    }
}

extension Tool {
    static func runOutput(_ path: String, _ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}
