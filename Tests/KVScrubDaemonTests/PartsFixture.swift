import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing
import KVCFormat
import KVCSimulation
import KVScrubSystemd
@testable import KVScrubDaemon

/// The daemon's parts, built as `Daemon` builds them, over a fresh cache
/// directory and a clock the test moves (`ManualClock`): the settings, the
/// three owned states, the event recorder (its log kept in `lines`), the
/// state database, the scrubber and the index maintainer (real inotify on the
/// real directory). Nothing runs on its own: the test steps the scrubber
/// (`Scrubber.step`) and the maintainer (`tick`, `apply`) and sees in a moment
/// what takes hours.
final class PartsFixture: Sendable {
    let root: String
    let cache: String
    let clock: ManualClock
    let settings: DaemonSettings
    let index = PartState(IndexState())
    let scrub = PartState(ScrubState())
    let counts = PartState(CounterState())
    let lines = NIOLockedValueBox<[(Logger.Level, String, Logger.Metadata)]>([])
    let events: EventRecorder
    let database: StateDatabase
    let scrubber: Scrubber
    let maintainer: IndexMaintainer
    let reports: DaemonReports

    init(_ configure: (inout DaemonConfig) -> Void = { _ in }) throws {
        root = NSTemporaryDirectory() + "parts-" + UUID().uuidString
        cache = root + "/cache"
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        var config = DaemonConfig()
        config.cacheDir = cache
        config.stateDir = root + "/state"
        config.scrubRateMBps = 0
        configure(&config)
        clock = ManualClock()
        settings = DaemonSettings(config: config, clock: clock)
        let lines = self.lines
        let logger = Logger(label: "test") { _ in EventRecorderTests.Capture(lines: lines) }
        events = EventRecorder(counts: counts, clock: clock, logger: logger)
        let (index, scrub, counts) = (self.index, self.scrub, self.counts)
        database = StateDatabase(directory: config.stateDir, clock: clock,
                                 snapshot: { StateSaver.snapshot(index: index, scrub: scrub, counts: counts) }, report: { _, _ in })
        _ = database.open()
        let saver = StateSaver(database: database, index: index, scrub: scrub, counts: counts, clock: clock)
        let faults = TestFaults(environment: [:])
        scrubber = Scrubber(state: scrub, index: index, settings: settings, events: events, database: database, saver: saver,
                            faults: faults, stopping: StopFlag(), logger: logger)
        let reports = DaemonReports(settings: settings, index: index, scrub: scrub, counts: counts, metrics: DaemonMetrics())
        self.reports = reports
        let database = self.database
        maintainer = try IndexMaintainer(state: index, settings: settings, events: events, scrubber: scrubber, saver: saver,
                                         notifier: SystemdNotifier(), faults: faults, logger: logger,
                                         history: { database.enqueue([.history($0)]) }, statusLine: { reports.statusLine() })
        try maintainer.openDirectory(cache, create: false)
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    var dir: CacheDirectory { maintainer.directory! }

    /// Writes a checkpoint (v2 unless told) with a payload of `bytes`.
    @discardableResult
    func write(_ seed: UInt64, bytes: Int = 64 << 10, version: UInt8 = 2, reason: KVCReason = .cold,
               createdAt: UInt64 = 1, lastUsed: UInt64? = nil) throws -> String {
        let path = try CheckpointWriter(version: version).store(
            in: cache, text: Array("parts \(seed)".utf8),
            payload: SyntheticPayload(byteCount: UInt64(bytes), tokens: 1, ctxSize: 4096, seed: seed),
            metadata: .init(reason: reason, modelID: 1, quantBits: 4, ctxSize: 4096, tokens: 1, createdAt: createdAt,
                            lastUsed: lastUsed ?? createdAt))
        return (path as NSString).lastPathComponent
    }

    /// What inotify has reported so far, applied as the maintenance loop would.
    func applyEvents() {
        maintainer.apply(maintainer.watcher.next(timeout: .milliseconds(0)), in: dir)
    }

    /// The files written so far put in the index as a start-up scan would, not as arrivals
    /// (what inotify reported is dropped): nothing is queued for the scrub.
    func indexAsAtStartUp() throws {
        _ = maintainer.watcher.next(timeout: .milliseconds(0))
        let scan = try dir.scan(engineABI: settings.config.engine)
        index.change { $0.index.replace(with: scan.entries, judgedUnder: scan.engineABI) }
    }

    /// Steps the scrubber until it is idle; returns how long it would sleep.
    @discardableResult
    func scrubUntilIdle() -> Double {
        for _ in 0..<1000 {
            if case .idle(let seconds) = scrubber.step() { return seconds }
        }
        Issue.record("the scrubber never went idle")
        return 0
    }

    func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: cache + "/" + name) }

    /// The log lines of one event.
    func logged(_ event: DaemonEvent.Kind) -> [(Logger.Level, String, Logger.Metadata)] {
        lines.withLockedValue { $0 }.filter { $0.2["event"] == .string(event.rawValue) }
    }
}
