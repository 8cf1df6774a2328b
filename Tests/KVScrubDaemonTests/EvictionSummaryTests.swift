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
        let f = try PartsFixture { $0.budgetMB = 2 }
        for seed in 0..<8 { try f.write(UInt64(seed), bytes: 512 << 10) }
        try f.indexAsAtStartUp()
        let (clock, t0, dir, lines, evictor) = (f.clock, f.clock.now(), f.dir, f.lines, f.maintainer.evictor)

        evictor.evaluate(directory: dir)
        let evicted = lines.withLockedValue { $0 }.filter { $0.2["event"] == "evicted" }
        #expect(evicted.count >= 3 && evicted.allSatisfy { $0.0 == .info })
        #expect(f.index.read { $0.index.totalBytes } <= 2 << 20)
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
