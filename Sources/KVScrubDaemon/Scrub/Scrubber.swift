import CLinux
import Foundation
import KVCFormat
import KVScrubControl
import Logging
import NIOConcurrencyHelpers

/// Re-verifies every checkpoint at least once per scrub interval, and every
/// new one soon after it arrives, and removes the ones proven corrupt.
///
/// Scheduling: a pass walks the index in file-name order, one file at a
/// time, and records the last name it finished (the cursor) in the state
/// file; after a restart it goes on after that name instead of starting over.
/// A pass starts one interval after the previous one started, so every file
/// is seen at least once per interval (if a pass is slower than the interval,
/// the status says so). Files that arrive are verified `scrub_new_file_delay`
/// seconds later, ahead of the pass, while still in page cache.
///
/// Cost: the scrub thread is in the idle I/O class (`ioprio_set`), its reads
/// are paced and leave no page-cache footprint (`ScrubThrottle`), and between
/// files it sleeps on a semaphore: no timer fires while there is nothing to do.
///
/// Removal follows the rule of kvc-format.md revision 2, without any help
/// from the engine (`Scrubber+Removal.swift`): a corrupt verdict from an
/// undisturbed read queues the file for a second look once it has been left
/// alone for `removal_settle_seconds`; only if that look agrees is the file
/// taken away, and past the removal brake's limit it is quarantined instead.
///
/// It owns `ScrubState` (the pass's progress, the read in progress and its
/// rate, the files awaiting a second look, the brake) and the new-file queue;
/// it changes the index only through `CacheIndex`'s narrow methods (a
/// verdict, a record, a file it took away, the pass's walk).
final class Scrubber: Sendable {
    /// What the scrubber owns (`ScrubState`): only it changes it.
    let state: PartState<ScrubState>
    /// The index, which the scrubber reads, and changes only through its narrow methods: a verdict,
    /// a record, a file it took away, the pass's walk.
    let index: PartState<IndexState>
    let settings: DaemonSettings
    let logger: Logger
    /// Where this part reports what happened (logged and counted in one place).
    let events: EventRecorder
    let database: StateDatabase
    let saver: StateSaver
    let faults: TestFaults
    let stopping: StopFlag
    let throttle: ScrubThrottle
    private let wakeup = DispatchSemaphore(value: 0)
    private let newFiles = NIOLockedValueBox(DueQueue())
    /// The first corrupt verdict of each file waiting for the removal rule's second look.
    let firstVerdicts = NIOLockedValueBox<[String: VerifyReport]>([:])
    let directory = NIOLockedValueBox<CacheDirectory?>(nil)

    init(state: PartState<ScrubState>, index: PartState<IndexState>, settings: DaemonSettings, events: EventRecorder,
                 database: StateDatabase, saver: StateSaver, faults: TestFaults, stopping: StopFlag, logger: Logger) {
        self.state = state
        self.index = index
        self.settings = settings
        self.events = events
        self.database = database
        self.saver = saver
        self.faults = faults
        self.stopping = stopping
        self.logger = logger
        throttle = ScrubThrottle(state: state, settings: settings, events: events, stopping: stopping)
    }

    var clock: any DaemonClock { settings.clock }

    /// The progress and the brake the state database kept (start-up).
    func restore(progress: ScrubProgress, brake: RemovalBrake) {
        state.change { s in
            s.progress = progress
            s.brake = brake
            // Which pass found each pending file is not kept across a restart: the files are looked at
            // afresh, and the last pass's summary owes no more second looks.
            if s.progress.lastPass?.pendingSecondLooks != nil { s.progress.lastPass?.pendingSecondLooks = 0 }
        }
    }

    /// Points the scrubber at a (re)opened cache directory.
    func use(directory dir: CacheDirectory?) {
        directory.withLockedValue { $0 = dir }
        wake()
    }

    /// A checkpoint arrived or changed content: verify it soon.
    func fileArrived(_ name: String) {
        let due = clock.now() + settings.setting(\.scrubNewFileDelaySeconds)
        newFiles.withLockedValue { $0.schedule(name, at: due) }
        wake()
    }

    func wake() { wakeup.signal() }

    /// What one `step` did.
    enum Step: Equatable, Sendable {
        /// Verified a file, took a second look, or started or finished a pass: step again at once.
        case worked
        /// Nothing is due: sleep at most this many seconds, or until woken (`wake`).
        case idle(seconds: Double)
    }

    /// The scrub thread's body; returns once `stopping` is set.
    func run() {
        let rc = kvs_ioprio_set_idle_self()
        if rc != 0 { logger.warning("cannot enter the idle I/O class; scrubbing at normal priority", metadata: ["errno": "\(-rc)"]) }
        while !stopping.isSet {
            if case .idle(let seconds) = step() { _ = wakeup.wait(timeout: .now() + seconds) }
        }
        persist(force: true)
    }

    /// Does the one thing due first at the clock's time, in this order: a second look, a new
    /// file's check, the pass's next file (or its end), the start of a pass. When nothing is due,
    /// says how long until something is. The scrub thread loops over it; a test steps it with a
    /// clock of its own.
    func step() -> Step {
        let now = clock.now()
        guard let dir = directory.withLockedValue({ $0 }) else { return .idle(seconds: 1) }
        // Paused (`scrub pause`): no scrub I/O at all, new files included, until resumed.
        let paused = state.change { s -> Bool in
            guard s.progress.paused == true else { return false }
            s.rate = 0 // a rate is of reading now, not of the last read
            return true
        }
        if paused { return .idle(seconds: 3600) }
        if let name = nextDuePendingRemoval(now: now) {
            _ = confirmRemoval(name, in: dir, observer: throttle)
            return .worked
        }
        if let name = nextDueNewFile(now: now) {
            scrub(name, in: dir, partOfPass: false)
            return .worked
        }
        let (pass, cursor, lastStart) = state.read {
            ($0.progress.passStartedAt, $0.progress.cursor, max($0.progress.lastPass?.startedAt ?? 0, $0.progress.lastCancelledAt ?? 0))
        }
        if let pass {
            if let next = index.change({ $0.index.nextInPass(pass, cursor: cursor) }) {
                scrub(next, in: dir, partOfPass: true)
            } else {
                finishPass(now: now)
            }
            return .worked
        }
        let interval = settings.setting(\.scrubIntervalHours) * 3600
        let nextStart = lastStart + interval
        if now >= nextStart {
            startPass(now: now)
            return .worked
        }
        let nextNew = newFiles.withLockedValue { $0.earliest() }
        let nextRemoval = state.change { s in
            s.rate = 0 // idle: nothing is being read
            return s.pendingRemoval.values.min()
        }
        let until = min(nextStart, nextNew ?? .infinity, nextRemoval ?? .infinity) - now
        return .idle(seconds: max(0.01, min(until, 3600)))
    }

    private func nextDuePendingRemoval(now: Double) -> String? {
        state.change { s in
            guard let (name, _) = s.pendingRemoval.filter({ $0.value <= now }).min(by: { $0.value < $1.value }) else { return nil }
            s.pendingRemoval.removeValue(forKey: name)
            return name
        }
    }

    private func nextDueNewFile(now: Double) -> String? {
        newFiles.withLockedValue { $0.takeDue(now: now) }
    }

    func startPass(now: Double) {
        let files = index.read { $0.index.count }
        events.record(changing: state) { s in
            s.progress.passStartedAt = now
            s.progress.pausedSeconds = 0
            s.progress.cursor = nil
            s.progress.filesDone = 0
            s.progress.bytesDone = 0
            s.progress.corruptFound = 0
            s.progress.removed = 0
            s.progress.suspected = 0
            return DaemonEvent(.scrubPassStarted, .info, "scrub pass started", ["files": "\(files)"])
        }
        persist(force: true)
    }

    private func finishPass(now: Double) {
        var took = 0.0
        index.change { $0.index.endPass() }
        events.record(changing: state) { s in
            let started = s.progress.passStartedAt ?? now
            let p = PassSummary(startedAt: started, endedAt: now, files: s.progress.filesDone,
                                            bytes: s.progress.bytesDone, corruptFound: s.progress.corruptFound, removed: s.progress.removed,
                                            suspected: s.progress.suspected ?? 0, pendingSecondLooks: s.pendingSecondLooks(of: started), kept: 0)
            s.progress.lastPass = p
            s.progress.passStartedAt = nil
            s.progress.cursor = nil
            took = p.endedAt - p.startedAt
            return DaemonEvent(.scrubPassFinished, .notice, "scrub pass finished", [
                "files": "\(p.files)", "bytes": "\(p.bytes)", "seconds": "\(Int(took))", "corrupt": "\(p.corruptFound)",
                "removed": "\(p.removed)", "awaiting_second_look": "\(p.pendingSecondLooks ?? 0)"], counts: .passCompleted)
        }
        if took > settings.config.scrubIntervalHours * 3600 {
            logger.warning("the scrub pass took longer than the scrub interval: raise scrub_rate_mb_per_s or the interval",
                           metadata: ["seconds": "\(Int(took))"])
        }
        persist(force: true)
    }

    private func scrub(_ name: String, in dir: CacheDirectory, partOfPass: Bool) {
        // The pass (its start time) this file is verified for: a pass cancelled meanwhile does not count it.
        let pass = state.change { s -> Double? in
            s.current = name
            s.abort = false
            return partOfPass ? s.progress.passStartedAt : nil
        }
        defer { state.change { $0.current = nil } }
        var bytes: UInt64 = 0
        do {
            let (abi, recorded) = index.read { ($0.index.engineABI.generation, $0.index.records[name]) }
            let report = try dir.verify(name: name, with: Verifier(engine: abi, recorded: recorded, observer: throttle))
            bytes = report.bytesRead
            let now = clock.now()
            index.change { $0.index.setVerdict(name, report.verdict) }
            state.change { $0.brake.noteVerified(now: now) }
            recordIfNew(report, now: now)
            if report.verdict == .corrupt { _ = foundCorrupt(report, partOfPass: partOfPass) }
        } catch is ScrubThrottle.ScrubStopped {
            return // abandoned for shutdown or `scrub cancel`: the cursor stays before this file
        } catch let e as KVCError where e.errno == .noSuchFileOrDirectory {
            index.change { _ = $0.index.remove(name) }
        } catch {
            events.record(DaemonEvent(.scrubError, .error, "cannot verify", ["file": "\(name)", "error": "\(error)"],
                                      counts: .error("scrub \(name): \(error)")))
        }
        if let pass {
            index.change { i in
                state.change { s in
                    guard s.progress.passStartedAt == pass else { return }
                    i.index.advancePass(pass, from: s.progress.cursor, to: name)
                    s.progress.cursor = name
                    s.progress.filesDone += 1
                    s.progress.bytesDone += bytes
                }
            }
            persist(force: false)
        }
    }

    /// Records the text and payload checksums of a v1 file verified sound, from
    /// an undisturbed read, when it has no record yet or its record belongs to
    /// a file since replaced (another inode, lengths or created_at).
    func recordIfNew(_ report: VerifyReport, now: Double) {
        guard report.verdict == .ok, report.unchangedDuringRead, let body = report.bodyChecksums else { return }
        let recorded = index.change { s -> Bool in
            guard let e = s.index[report.name], e.identity == report.identity, s.index.records[report.name]?.key != body.key else { return false }
            s.index.setRecord(report.name, body.recorded(at: now))
            return true
        }
        if recorded {
            persist(force: false)
            events.record(DaemonEvent(.checksumRecorded, .debug, "recorded the checksums of a v1 checkpoint", [
                "file": "\(report.name)", "text_crc": "\(hex32(body.textCRC))", "payload_crc": "\(hex32(body.payloadCRC))"]))
        }
    }

    /// Hands what changed to the state database (`StateSaver`).
    func persist(force: Bool) { saver.persist(force: force) }
}
