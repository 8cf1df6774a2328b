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
    /// The parts over a fresh cache directory, with the scrub's timings set.
    static func fixture(newFileDelay: Double = 30, settle: Double = 60, intervalHours: Double = 24) throws -> PartsFixture {
        try PartsFixture { c in
            c.scrubNewFileDelaySeconds = newFileDelay
            c.removalSettleSeconds = settle
            c.scrubIntervalHours = intervalHours
        }
    }

    @Test func aPassStartsOneIntervalAfterTheLastStarted_andVerifiesEveryFile() throws {
        let f = try Self.fixture(intervalHours: 24)
        let a = try f.write(1), b = try f.write(2)
        try f.indexAsAtStartUp()
        let t0 = f.clock.now()
        // No pass yet: one starts at once and goes through both files.
        #expect(f.scrubUntilIdle() == 3600) // the next start is a day away; the thread sleeps at most an hour at a time
        let first = try #require(f.scrub.read { $0.progress.lastPass })
        #expect(first.startedAt == t0 && first.files == 2 && first.corruptFound == 0)
        #expect(f.index.read { [$0.index.verdicts[a], $0.index.verdicts[b]] } == [.ok, .ok])
        // A second before the interval is up: nothing starts, and it says how long to wait.
        f.clock.set(t0 + 86_399)
        #expect(f.scrubUntilIdle() == 1)
        #expect(f.scrub.read { $0.progress.passStartedAt } == nil)
        // At the interval: the next pass, started then.
        f.clock.set(t0 + 86_400)
        #expect(f.scrubber.step() == .worked)
        #expect(f.scrub.read { $0.progress.passStartedAt } == t0 + 86_400)
        _ = f.scrubUntilIdle()
        #expect(f.scrub.read { $0.progress.lastPass?.startedAt } == t0 + 86_400)
    }

    @Test func aNewFile_isCheckedTheNewFileDelayAfterItArrives_notBefore() throws {
        let f = try Self.fixture(newFileDelay: 30)
        _ = f.scrubUntilIdle() // the first pass, over an empty cache
        let t0 = f.clock.now()
        let name = try f.write(3)
        f.applyEvents()
        #expect(abs(f.scrubUntilIdle() - 30) < 0.01)
        f.clock.set(t0 + 29)
        #expect(abs(f.scrubUntilIdle() - 1) < 0.01)
        #expect(f.index.read { $0.index.verdicts[name] } == nil, "checked before its delay")
        f.clock.set(t0 + 30)
        _ = f.scrubUntilIdle()
        #expect(f.index.read { $0.index.verdicts[name] } == .ok)
    }

    @Test func aCorruptFile_goesOnlyOnceLeftAloneForTheSettleTime() throws {
        let f = try Self.fixture(newFileDelay: 0, settle: 60)
        _ = f.scrubUntilIdle()
        let name = try f.write(4)
        f.applyEvents()
        // Damage in the payload, as a bad disk would leave it; its ctime is the settle time's start.
        let path = f.cache + "/" + name
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count - 100] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let st = try FileStatus.of(name: name, in: f.dir.fd, dirPath: f.dir.path)
        let changed = Double(max(st.modifiedAtNanos, st.changedAtNanos)) / 1e9
        f.clock.set(max(f.clock.now(), changed))
        // The first look finds it corrupt; the second look is due 60 s after the last change.
        let wait = f.scrubUntilIdle()
        #expect(f.index.read { $0.index.verdicts[name] } == .corrupt)
        let due = try #require(f.scrub.read { $0.pendingRemoval[name] })
        #expect(abs(due - (changed + 60)) < 0.001)
        #expect(wait <= 60 && wait > 59)
        // A second short of it: still there.
        f.clock.set(due - 1)
        _ = f.scrubUntilIdle()
        #expect(f.exists(name), "removed before the settle time")
        // At the settle time: the second look agrees, and the file goes.
        f.clock.set(due)
        _ = f.scrubUntilIdle()
        #expect(!f.exists(name))
        let counters = f.counts.read { $0.counters }
        #expect(counters.corruptFound == 1 && counters.corruptRemoved == 1)
        #expect(f.index.read { $0.index[name] } == nil)
    }
}
