import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing
import KVCFormat
import KVCSimulation
@testable import KVScrubDaemon

/// Evictions in simulated time (`ManualClock`), in process, on real files:
/// each eviction logged at info, and one notice-level summary when its ten
/// minutes are over, not before. (The end-to-end test once needed a test-only
/// environment variable to shorten the ten minutes.)
@Suite struct EvictionSummaryTests {
    @Test func eachEvictionIsInfo_andTheSummaryComesAtNotice_tenMinutesAfterTheWindowOpened() throws {
        let root = NSTemporaryDirectory() + "eviction-summary-" + UUID().uuidString
        let cache = root + "/cache"
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        for seed in 0..<8 {
            try CheckpointWriter(version: 2).store(
                in: cache, text: Array("evict \(seed)".utf8),
                payload: SyntheticPayload(byteCount: 512 << 10, tokens: 1, ctxSize: 4096, seed: UInt64(seed)),
                metadata: .init(reason: .cold, modelID: 1, quantBits: 4, ctxSize: 4096, tokens: 1, createdAt: 1))
        }
        var config = DaemonConfig()
        config.cacheDir = cache
        config.budgetMB = 2
        let clock = ManualClock()
        let t0 = clock.now()
        let state = DaemonState(config: config, clock: clock)
        let dir = try CacheDirectory(path: cache)
        let scan = try dir.scan(engineABI: config.engine)
        state.with { $0.replaceIndex(scan.entries, judgedUnder: scan.engineABI) }
        let lines = NIOLockedValueBox<[(Logger.Level, String, Logger.Metadata)]>([])
        let logger = Logger(label: "test") { _ in EventRecorderTests.Capture(lines: lines) }
        let evictor = Evictor(state: state, logger: logger)

        evictor.evaluate(directory: dir)
        let evicted = lines.withLockedValue { $0 }.filter { $0.2["event"] == "evicted" }
        #expect(evicted.count >= 3 && evicted.allSatisfy { $0.0 == .info })
        #expect(state.with { $0.totalBytes } <= 2 << 20)
        #expect(abs((evictor.summaryDueIn() ?? 0) - 600) < 0.001)

        func summaries() -> [(Logger.Level, String, Logger.Metadata)] {
            lines.withLockedValue { $0 }.filter { $0.2["event"] == "eviction-summary" }
        }
        clock.set(t0 + 599)
        evictor.summarizeIfDue()
        #expect(summaries().isEmpty, "summed up before its ten minutes")
        clock.set(t0 + 600)
        evictor.summarizeIfDue()
        let summary = try #require(summaries().first)
        #expect(summaries().count == 1)
        #expect(summary.0 == .notice && summary.1.hasPrefix("evicted \(evicted.count) files ("), "\(summary.1)")
        #expect(summary.2["files_budget"] == "\(evicted.count)" && summary.2["seconds"] == "600")
        // Nothing evicted since: no summary due, and none logged at the next window's end.
        #expect(evictor.summaryDueIn() == nil)
        clock.set(t0 + 1200)
        evictor.summarizeIfDue()
        #expect(summaries().count == 1)
    }
}
