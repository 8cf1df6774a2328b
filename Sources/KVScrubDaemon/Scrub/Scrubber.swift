import CLinux
import Foundation
import KVCFormat
import KVScrubControl
import Logging
import Synchronization

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
public final class Scrubber: Sendable {
    let state: DaemonState
    let logger: Logger
    /// Where this part reports what happened (logged and counted in one place).
    let events: EventRecorder
    let database: StateDatabase
    let faults: TestFaults
    let stopping: StopFlag
    let throttle: ScrubThrottle
    private let wakeup = DispatchSemaphore(value: 0)
    private let newFiles = Mutex(DueQueue())
    /// The first corrupt verdict of each file waiting for the removal rule's second look.
    let firstVerdicts = Mutex<[String: VerifyReport]>([:])
    let directory = Mutex<CacheDirectory?>(nil)
    private let lastPersist = Mutex(0.0)

    package init(state: DaemonState, database: StateDatabase, faults: TestFaults, stopping: StopFlag, logger: Logger) {
        self.state = state
        self.database = database
        self.faults = faults
        self.stopping = stopping
        self.logger = logger
        self.events = EventRecorder(state: state, logger: logger)
        throttle = ScrubThrottle(state: state, stopping: stopping)
    }

    /// Points the scrubber at a (re)opened cache directory.
    public func use(directory dir: CacheDirectory?) {
        directory.withLock { $0 = dir }
        wake()
    }

    /// A checkpoint arrived or changed content: verify it soon.
    public func fileArrived(_ name: String) {
        let due = state.clock.now() + state.config.scrubNewFileDelaySeconds
        newFiles.withLock { $0.schedule(name, at: due) }
        wake()
    }

    public func wake() { wakeup.signal() }

    /// What one `step` did.
    public enum Step: Equatable, Sendable {
        /// Verified a file, took a second look, or started or finished a pass: step again at once.
        case worked
        /// Nothing is due: sleep at most this many seconds, or until woken (`wake`).
        case idle(seconds: Double)
    }

    /// The scrub thread's body; returns once `stopping` is set.
    public func run() {
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
    public func step() -> Step {
        let now = state.clock.now()
        guard let dir = directory.withLock({ $0 }) else { return .idle(seconds: 1) }
        // Paused (`scrub pause`): no scrub I/O at all, new files included, until resumed.
        if state.with({ $0.scrub.paused == true }) {
            state.with { $0.scrubRate = 0 } // a rate is of reading now, not of the last read
            return .idle(seconds: 3600)
        }
        if let name = nextDuePendingRemoval(now: now) {
            _ = confirmRemoval(name, in: dir, observer: throttle)
            return .worked
        }
        if let name = nextDueNewFile(now: now) {
            scrub(name, in: dir, partOfPass: false)
            return .worked
        }
        let (passActive, lastStart) = state.with {
            ($0.scrub.passStartedAt != nil, max($0.scrub.lastPass?.startedAt ?? 0, $0.scrub.lastCancelledAt ?? 0))
        }
        if passActive {
            if let next = state.with({ s in s.nextInPass() }) {
                scrub(next, in: dir, partOfPass: true)
            } else {
                finishPass(now: now)
            }
            return .worked
        }
        let interval = state.config.scrubIntervalHours * 3600
        let nextStart = lastStart + interval
        if now >= nextStart {
            startPass(now: now)
            return .worked
        }
        let nextNew = newFiles.withLock { $0.earliest() }
        let nextRemoval = state.with { $0.pendingRemoval.values.min() }
        let until = min(nextStart, nextNew ?? .infinity, nextRemoval ?? .infinity) - now
        state.with { $0.scrubRate = 0 } // idle: nothing is being read
        return .idle(seconds: max(0.01, min(until, 3600)))
    }

    private func nextDuePendingRemoval(now: Double) -> String? {
        state.with { s in
            guard let (name, _) = s.pendingRemoval.filter({ $0.value <= now }).min(by: { $0.value < $1.value }) else { return nil }
            s.pendingRemoval.removeValue(forKey: name)
            return name
        }
    }

    private func nextDueNewFile(now: Double) -> String? {
        newFiles.withLock { $0.takeDue(now: now) }
    }

    func startPass(now: Double) {
        events.record { s in
            s.scrub.passStartedAt = now
            s.scrub.pausedSeconds = 0
            s.scrub.cursor = nil
            s.scrub.filesDone = 0
            s.scrub.bytesDone = 0
            s.scrub.corruptFound = 0
            s.scrub.removed = 0
            s.scrub.suspected = 0
            return DaemonEvent(.scrubPassStarted, .info, "scrub pass started", ["files": "\(s.index.count)"])
        }
        persist(force: true)
    }

    private func finishPass(now: Double) {
        var took = 0.0
        events.record { s in
            let started = s.scrub.passStartedAt ?? now
            let p = PassSummary(startedAt: started, endedAt: now, files: s.scrub.filesDone,
                                            bytes: s.scrub.bytesDone, corruptFound: s.scrub.corruptFound, removed: s.scrub.removed,
                                            suspected: s.scrub.suspected ?? 0, pendingSecondLooks: s.pendingSecondLooks(of: started), kept: 0)
            s.scrub.lastPass = p
            s.scrub.passStartedAt = nil
            s.scrub.cursor = nil
            took = p.endedAt - p.startedAt
            return DaemonEvent(.scrubPassFinished, .notice, "scrub pass finished", [
                "files": "\(p.files)", "bytes": "\(p.bytes)", "seconds": "\(Int(took))", "corrupt": "\(p.corruptFound)",
                "removed": "\(p.removed)", "awaiting_second_look": "\(p.pendingSecondLooks ?? 0)"], counts: .passCompleted)
        }
        if took > state.config.scrubIntervalHours * 3600 {
            logger.warning("the scrub pass took longer than the scrub interval: raise scrub_rate_mb_per_s or the interval",
                           metadata: ["seconds": "\(Int(took))"])
        }
        persist(force: true)
    }

    private func scrub(_ name: String, in dir: CacheDirectory, partOfPass: Bool) {
        state.with { $0.scrubbing = name; $0.scrubAbort = false }
        defer { state.with { $0.scrubbing = nil } }
        var bytes: UInt64 = 0
        do {
            let (abi, recorded) = state.with { ($0.engineABI.generation, $0.records[name]) }
            let report = try dir.verify(name: name, with: Verifier(engine: abi, recorded: recorded, observer: throttle))
            bytes = report.bytesRead
            let now = state.clock.now()
            state.with {
                $0.setVerdict(name, report.verdict)
                $0.brake.noteVerified(now: now)
            }
            recordIfNew(report, now: now)
            if report.verdict == .corrupt { _ = foundCorrupt(report, partOfPass: partOfPass) }
        } catch is ScrubThrottle.ScrubStopped {
            return // abandoned for shutdown or `scrub cancel`: the cursor stays before this file
        } catch let e as KVCError where e.errno == .noSuchFileOrDirectory {
            state.with { _ = $0.remove(name) }
        } catch {
            events.record(DaemonEvent(.scrubError, .error, "cannot verify", ["file": "\(name)", "error": "\(error)"],
                                      counts: .error("scrub \(name): \(error)")))
        }
        if partOfPass {
            state.with { s in
                s.advancePass(to: name)
                s.scrub.filesDone += 1
                s.scrub.bytesDone += bytes
            }
            persist(force: false)
        }
    }

    /// Records the text and payload checksums of a v1 file verified sound, from
    /// an undisturbed read, when it has no record yet or its record belongs to
    /// a file since replaced (another inode, lengths or created_at).
    func recordIfNew(_ report: VerifyReport, now: Double) {
        guard report.verdict == .ok, report.unchangedDuringRead, let body = report.bodyChecksums else { return }
        let recorded = state.with { s -> Bool in
            guard let e = s.index[report.name], e.identity == report.identity, s.records[report.name]?.key != body.key else { return false }
            s.setRecord(report.name, body.recorded(at: now))
            return true
        }
        if recorded {
            persist(force: false)
            events.record(DaemonEvent(.checksumRecorded, .debug, "recorded the checksums of a v1 checkpoint", [
                "file": "\(report.name)", "text_crc": "\(hex32(body.textCRC))", "payload_crc": "\(hex32(body.payloadCRC))"]))
        }
    }

    /// Hands what changed to the state database: records and evictions always,
    /// the state row (progress, counters) at most every 2 s unless forced.
    /// Returns at once: the database merges and writes on its own queue.
    func persist(force: Bool) {
        let now = state.clock.now()
        let due = lastPersist.withLock { last -> Bool in
            if force || now - last >= 2 { last = now; return true }
            return false
        }
        database.enqueue(state.with { $0.takeChanges(includingCore: due) })
    }
}
