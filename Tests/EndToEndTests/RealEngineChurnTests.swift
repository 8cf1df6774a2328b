import Foundation
import Testing
import KVScrubDaemon

/// ds4's own cache code (`DS4Engine`) storing, restoring, rewriting tool maps
/// and evicting under a small budget for a minute, beside a daemon scrubbing
/// flat out: nothing it writes may be confirmed corrupt, and every file it
/// leaves must restore with the right bytes. A suite of its own so that its
/// fixed minute runs beside `RealEngineTests` rather than after them.
///
/// KVSCRUBD_DS4_CHURN_SECONDS sets the churn's length (default 60 s).
@Suite struct RealEngineChurnTests {
    static var churnSeconds: Double { Double(ProcessInfo.processInfo.environment["KVSCRUBD_DS4_CHURN_SECONDS"] ?? "") ?? 60 }

    @Test func liveChurn_besideAnUnthrottledScrub_confirmsNothingCorrupt_andEveryFileStaysRestorable() async throws {
        guard let exe = await DS4Engine.harness() else { return }
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let d = try await DaemonProcess(root: root, extra: [
            "--budget-mb", "0", "--scrub-rate-mbps", "0", "--scrub-interval-hours", "0.0003", "--scrub-new-file-delay", "0"],
            cacheDir: cache)
        // ds4's own eviction under a 2 MiB budget: files come and go all the time.
        let churn = try DS4Engine.start(exe, ["churn", cache, "\(Self.churnSeconds)", "2", "19"], log: root.file("churn.log"))
        defer { if churn.isRunning { churn.terminate() } }
        await churn.exited()
        #expect(churn.terminationStatus == 0)
        try await waitUntil("no removal pending", timeout: 60, daemon: d) { (try d.status().pendingRemovals ?? 0) == 0 }
        // One more look at everything left, as the engine left it.
        let left = checkpoints(in: cache).sorted()
        let verdicts = try d.scrubNow(left)
        let st = try d.status()
        _ = await d.stop()
        let engine = DS4Engine.summary(ofLog: root.file("churn.log"))
        #expect((engine["operations"] ?? 0) >= 200, "\(engine)")
        #expect((engine["stores"] ?? 0) > 0 && (engine["hits"] ?? 0) > 0 && (engine["rewrites"] ?? 0) > 0, "\(engine)")
        #expect((engine["engine_evictions"] ?? 0) > 0, "the engine's own eviction never ran: \(engine)")
        #expect(engine["wrong_byte_restores"] == 0 && engine["load_failures"] == 0 && engine["engine_discards"] == 0, "\(engine)")
        #expect(st.counters.corruptFound == 0 && st.counters.corruptRemoved == 0, "files confirmed corrupt during the churn")
        // ds4's own evictions are the engine's deletions: counted, never errors.
        #expect((st.engineDeletedLastDay?.files ?? 0) > 0 && st.counters.errors == 0, "\(String(describing: st.engineDeletedLastDay)) \(st.lastErrors)")
        #expect(d.events("corrupt-removed").isEmpty && d.events("corrupt-quarantined").isEmpty && d.events("corrupt-kept").isEmpty)
        #expect(verdicts.allSatisfy { $0.verdict == .ok }, "\(verdicts.filter { $0.verdict != .ok }.map { "\($0.file) \($0.problems)" })")
        let view = try await DS4Engine.run(exe, ["check", cache]).summary
        #expect(view["files"] == left.count && view["restored"] == left.count && view["wrong_bytes"] == 0, "\(view)")
        let suspected = d.events("corrupt-suspected").count + d.events("corrupt-unconfirmed").count
        print("ds4 churn \(Self.churnSeconds) s beside an unthrottled scrub: engine \(engine); daemon: " +
              "\(st.engineDeletedLastDay?.files ?? 0) engine deletions counted, " +
              "\(st.counters.corruptFound) confirmed corrupt, \(st.counters.corruptRemoved) removed, \(suspected) suspicions put off; " +
              "\(left.count) files left, engine view \(view)")
    }
}
