import Foundation
import Logging
import Testing
import KVCFormat
import KVCSimulation
@testable import KVScrubDaemon

/// The scrubber's schedule in simulated time (`ManualClock`), in process, on
/// real files: when a pass starts, when a new file is checked, and that a
/// corrupt file goes only once it has been left alone for the settle time.
/// The scrub thread loops over `Scrubber.step`; here the test steps it.
@Suite struct ScrubScheduleTests {
    /// A scrubber over a fresh cache directory, its state and clock.
    struct Fixture {
        let root: String
        let cache: String
        let clock: ManualClock
        let state: DaemonState
        let scrubber: Scrubber
        let dir: CacheDirectory

        init(newFileDelay: Double = 30, settle: Double = 60, intervalHours: Double = 24) throws {
            root = NSTemporaryDirectory() + "scrub-schedule-" + UUID().uuidString
            cache = root + "/cache"
            try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
            var config = DaemonConfig()
            config.cacheDir = cache
            config.stateDir = root + "/state"
            config.scrubRateMBps = 0
            config.scrubNewFileDelaySeconds = newFileDelay
            config.removalSettleSeconds = settle
            config.scrubIntervalHours = intervalHours
            clock = ManualClock()
            let state = DaemonState(config: config, clock: clock)
            self.state = state
            let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
            let database = StateDatabase(directory: config.stateDir, clock: clock, snapshot: {
                state.with { StateDatabase.Snapshot(core: $0.core, records: $0.records, recentEvictions: $0.recentEvictions) }
            }, report: { _, _ in })
            _ = database.open()
            scrubber = Scrubber(state: state, database: database, faults: TestFaults(environment: [:]), stopping: StopFlag(), logger: logger)
            dir = try CacheDirectory(path: cache)
            scrubber.use(directory: dir)
        }

        /// Writes a v2 checkpoint and puts it in the index, as the maintenance thread would.
        @discardableResult
        func store(_ seed: UInt64, arrived: Bool) throws -> String {
            let path = try CheckpointWriter(version: 2).store(
                in: cache, text: Array("schedule \(seed)".utf8),
                payload: SyntheticPayload(byteCount: 64 << 10, tokens: 1, ctxSize: 4096, seed: seed),
                metadata: .init(reason: .cold, modelID: 1, quantBits: 4, ctxSize: 4096, tokens: 1, createdAt: 1))
            let name = (path as NSString).lastPathComponent
            let scan = try dir.scan(engineABI: state.config.engine)
            state.with { $0.replaceIndex(scan.entries, judgedUnder: scan.engineABI) }
            if arrived { scrubber.fileArrived(name) }
            return name
        }

        /// Steps until the scrubber is idle; returns how long it would sleep.
        func stepUntilIdle() -> Double {
            for _ in 0..<1000 {
                if case .idle(let seconds) = scrubber.step() { return seconds }
            }
            Issue.record("the scrubber never went idle")
            return 0
        }

        func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: cache + "/" + name) }
        func remove() { try? FileManager.default.removeItem(atPath: root) }
    }

    @Test func aPassStartsOneIntervalAfterTheLastStarted_andVerifiesEveryFile() throws {
        let f = try Fixture(intervalHours: 24)
        defer { f.remove() }
        let a = try f.store(1, arrived: false), b = try f.store(2, arrived: false)
        let t0 = f.clock.now()
        // No pass yet: one starts at once and goes through both files.
        #expect(f.stepUntilIdle() == 3600) // the next start is a day away; the thread sleeps at most an hour at a time
        let first = try #require(f.state.with { $0.scrub.lastPass })
        #expect(first.startedAt == t0 && first.files == 2 && first.corruptFound == 0)
        #expect(f.state.with { [$0.verdicts[a], $0.verdicts[b]] } == [.ok, .ok])
        // A second before the interval is up: nothing starts, and it says how long to wait.
        f.clock.set(t0 + 86_399)
        #expect(f.stepUntilIdle() == 1)
        #expect(f.state.with { $0.scrub.passStartedAt } == nil)
        // At the interval: the next pass, started then.
        f.clock.set(t0 + 86_400)
        #expect(f.scrubber.step() == .worked)
        #expect(f.state.with { $0.scrub.passStartedAt } == t0 + 86_400)
        _ = f.stepUntilIdle()
        #expect(f.state.with { $0.scrub.lastPass?.startedAt } == t0 + 86_400)
    }

    @Test func aNewFile_isCheckedTheNewFileDelayAfterItArrives_notBefore() throws {
        let f = try Fixture(newFileDelay: 30)
        defer { f.remove() }
        _ = f.stepUntilIdle() // the first pass, over an empty cache
        let t0 = f.clock.now()
        let name = try f.store(3, arrived: true)
        #expect(abs(f.stepUntilIdle() - 30) < 0.01)
        f.clock.set(t0 + 29)
        #expect(abs(f.stepUntilIdle() - 1) < 0.01)
        #expect(f.state.with { $0.verdicts[name] } == nil, "checked before its delay")
        f.clock.set(t0 + 30)
        _ = f.stepUntilIdle()
        #expect(f.state.with { $0.verdicts[name] } == .ok)
    }

    @Test func aCorruptFile_goesOnlyOnceLeftAloneForTheSettleTime() throws {
        let f = try Fixture(newFileDelay: 0, settle: 60)
        defer { f.remove() }
        _ = f.stepUntilIdle()
        let name = try f.store(4, arrived: true)
        // Damage in the payload, as a bad disk would leave it; its ctime is the settle time's start.
        let path = f.cache + "/" + name
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count - 100] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let st = try FileStatus.of(name: name, in: f.dir.fd, dirPath: f.dir.path)
        let changed = Double(max(st.modifiedAtNanos, st.changedAtNanos)) / 1e9
        f.clock.set(max(f.clock.now(), changed))
        // The first look finds it corrupt; the second look is due 60 s after the last change.
        let wait = f.stepUntilIdle()
        #expect(f.state.with { $0.verdicts[name] } == .corrupt)
        let due = try #require(f.state.with { $0.pendingRemoval[name] })
        #expect(abs(due - (changed + 60)) < 0.001)
        #expect(wait <= 60 && wait > 59)
        // A second short of it: still there.
        f.clock.set(due - 1)
        _ = f.stepUntilIdle()
        #expect(f.exists(name), "removed before the settle time")
        // At the settle time: the second look agrees, and the file goes.
        f.clock.set(due)
        _ = f.stepUntilIdle()
        #expect(!f.exists(name))
        let counters = f.state.with { $0.counters }
        #expect(counters.corruptFound == 1 && counters.corruptRemoved == 1)
        #expect(f.state.with { $0.index[name] } == nil)
    }
}
