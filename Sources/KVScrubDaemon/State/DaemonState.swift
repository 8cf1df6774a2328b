import Foundation
import KVCFormat
import KVScrubControl
import Synchronization

/// What every part of the daemon shares: the index, the counters, the scrub
/// progress and the settings in force. One lock guards it all; every holder
/// does only in-memory work under it (no I/O), so the control socket's
/// readers never wait behind a disk.
public final class DaemonState: Sendable {
    /// The scrub pass in progress, persisted so a restart resumes it.
    public struct ScrubProgress: Codable, Sendable, Equatable {
        public var passStartedAt: Double?
        /// The last file name the pass finished; the pass goes on in name order after it.
        public var cursor: String?
        public var filesDone = 0
        public var bytesDone: UInt64 = 0
        public var corruptFound = 0
        public var removed = 0
        /// Files the pass in progress found corrupt at a first look.
        public var suspected: Int?
        public var lastPass: PassSummary?
        // Scrub control (optional: absent in older state files).
        /// Set by `scrub pause`, cleared by `scrub resume`; survives a restart.
        public var paused: Bool?
        public var pausedAt: Double?
        /// Time this pass spent paused, left out of its rate and ETA.
        public var pausedSeconds: Double?
        /// When a pass was last cancelled: the next one is due an interval after it.
        public var lastCancelledAt: Double?

        public init() {}
    }

    /// A checkpoint the daemon evicted, kept for the regret window.
    public struct EvictionRecord: Codable, Sendable, Equatable {
        public var at: Double
        public var bytes: UInt64
        public init(at: Double, bytes: UInt64) { self.at = at; self.bytes = bytes }
    }

    /// An evicted checkpoint the engine wrote again within the window.
    public struct RegretRecord: Codable, Sendable, Equatable {
        public var at: Double
        public var file: String
        public var bytes: UInt64
        /// Seconds between the eviction and the file's return.
        public var afterSeconds: Double
    }

    /// Where the daemon is in its life; `status` shows it (its raw value) unless it is `running`.
    public enum Phase: String, Sendable {
        case starting
        case waitingForDirectory = "waiting for the cache directory"
        case running
        case stopping
    }

    public struct Inner: Sendable {
        public var config: DaemonConfig
        /// The daemon's clock (`DaemonClock`), here too so that what runs under the lock can read it.
        public let clock: any DaemonClock
        /// The engine's own deletions over the last day (this run), for `status`.
        public var engineDeletions = HourlyWindow()
        /// Temporary files seen old and unchanged once: removed at the next sweep if still so (`OrphanSweep`).
        public var orphanCandidates: [String: FileStamp] = [:]
        public var nextOrphanSweep: Double = 0
        /// For each file awaiting its second look because a scrub pass found it: that pass (its start
        /// time), so the confirmation still counts for it when the pass has ended meanwhile.
        public var pendingPass: [String: Double] = [:]
        /// Changed only through `insert`, `remove`, `replaceIndex` and `setEngineABI`, which keep `census`.
        public private(set) var index: [String: CacheEntry] = [:] { didSet { generation &+= 1 } }
        /// Changes with every change to `index` or `records` (`status` is cached against it).
        private(set) var generation: UInt64 = 0
        /// The counts `status` and the metrics show, kept with every change to the index, the verdicts and the records.
        private(set) var census = IndexCensus()
        /// The pass's walk in name order (`PassOrder`), and the pass (its start time) it was built for.
        fileprivate(set) var passOrder = PassOrder()
        fileprivate(set) var passOrderFor: Double?
        /// Continued checkpoints (waypoints) in the index: the only ones an arrival can supersede.
        private(set) var continuedNames: Set<String> = []
        public var totalBytes: UInt64 = 0
        public var phase = Phase.starting
        public var counters = DaemonCounters()
        public var scrub = ScrubProgress()
        /// Bytes per second over the last few seconds of scrubbing.
        public var scrubRate: Double = 0
        public var scrubbing: String?
        public var lastErrors: [String] = []
        public var freeBytes: UInt64?
        public var fsBytes: UInt64?
        public var startedAt: Double
        /// The last scrub verdict of each file this run (`setVerdict`).
        public private(set) var verdicts: [String: Verdict] = [:]
        /// Continued checkpoints an arrival superseded, and by which file.
        public var supersededBy: [String: String] = [:]
        /// Evictions within the regret window, by file name (persisted).
        public var recentEvictions: [String: EvictionRecord] = [:]
        /// Regrets of the last week (persisted), for `status` advice.
        public var regretLog: [RegretRecord] = []
        /// Set by `scrub cancel`: the read in progress is abandoned.
        public var scrubAbort = false
        /// The payload ABI of the engine in force, and how it was chosen.
        public var engineABI = EngineABI.Resolution(generation: nil, source: "none yet")
        /// The removal brake (persisted).
        public var brake = RemovalBrake()
        /// Files found corrupt, waiting for the removal rule's second look (name → when it is due).
        public var pendingRemoval: [String: Double] = [:]
        /// Checksums recorded for v1 files (persisted), by file name.
        public private(set) var records: [String: RecordedChecksum] = [:] { didSet { generation &+= 1 } }
        /// Names whose record or recent eviction changed since the last save.
        public var dirtyRecords: Set<String> = []
        public var dirtyEvictions: Set<String> = []

        mutating func setRecord(_ name: String, _ r: RecordedChecksum) {
            recounting(name) { s in
                s.records[name] = r
                s.dirtyRecords.insert(name)
            }
        }

        /// The records as the state database kept them (start-up).
        mutating func loadRecords(_ loaded: [String: RecordedChecksum]) {
            records = loaded
            recount()
        }

        /// The file's last scrub verdict; for a file in the index only.
        mutating func setVerdict(_ name: String, _ v: Verdict) {
            guard index[name] != nil else { return }
            recounting(name) { $0.verdicts[name] = v }
        }

        /// Runs `change`, which changes only what `name` is counted from, with `name`'s share of the census
        /// taken out before and put back after.
        private mutating func recounting<R>(_ name: String, _ change: (inout Inner) -> R) -> R {
            if let e = index[name] { census.count(e, verdict: verdicts[name], recorded: isRecorded(name), by: -1) }
            let r = change(&self)
            if let e = index[name] { census.count(e, verdict: verdicts[name], recorded: isRecorded(name), by: 1) }
            return r
        }

        private mutating func recount() {
            census = IndexCensus(index: index, verdicts: verdicts, isRecorded: isRecorded)
        }

        /// Whether the index's v1 file `name` has a record that matches it (nil: not a v1 file).
        func isRecorded(_ name: String) -> Bool? {
            guard let e = index[name], let h = e.header, h.version == 1 else { return nil }
            return records[name].map { $0.key == RecordedChecksum.Key(identity: e.identity, header: h) } ?? false
        }

        var checksumProtection: StatusReport.Checksums { census.checksums }

        /// The part that goes into the state database.
        var core: StateDatabase.Core {
            StateDatabase.Core(scrub: scrub, counters: counters, brake: brake, pendingRemovals: pendingRemoval.keys.sorted(),
                               regretLog: regretLog)
        }

        /// What changed since the last save, for the state database; clears the dirty marks.
        mutating func takeChanges(includingCore: Bool = true) -> [StateDatabase.Change] {
            var out: [StateDatabase.Change] = includingCore ? [.core(core)] : []
            for n in dirtyRecords { out.append(.record(n, records[n])) }
            for n in dirtyEvictions { out.append(.eviction(n, recentEvictions[n])) }
            dirtyRecords.removeAll(keepingCapacity: true)
            dirtyEvictions.removeAll(keepingCapacity: true)
            return out
        }

        /// Puts a new ABI in force and judges the whole index against it.
        mutating func setEngineABI(_ r: EngineABI.Resolution) {
            guard r != engineABI else { return }
            let changed = r.generation != engineABI.generation
            engineABI = r
            if changed {
                index = index.mapValues { $0.judged(engine: r.generation) }
                recount()
            }
        }

        mutating func insert(_ e: CacheEntry) {
            let old = index[e.fileName]
            if let old { totalBytes -= old.fileSize }
            recounting(e.fileName) { $0.index[e.fileName] = e }
            totalBytes += e.fileSize
            if e.header?.reason == .continued { continuedNames.insert(e.fileName) } else { continuedNames.remove(e.fileName) }
            if walkingPass { passOrder.inserted(e.fileName, size: e.fileSize, oldSize: old?.fileSize, cursor: scrub.cursor) }
        }

        @discardableResult
        mutating func remove(_ name: String) -> CacheEntry? {
            if let e = index[name] { census.count(e, verdict: verdicts[name], recorded: isRecorded(name), by: -1) }
            verdicts.removeValue(forKey: name)
            supersededBy.removeValue(forKey: name)
            if records.removeValue(forKey: name) != nil { dirtyRecords.insert(name) }
            continuedNames.remove(name)
            guard let old = index.removeValue(forKey: name) else { return nil }
            totalBytes -= old.fileSize
            if walkingPass { passOrder.removed(name, size: old.fileSize, cursor: scrub.cursor) }
            return old
        }

        /// A scan's index, its entries judged already under the ABI it resolved: both put in force at once,
        /// so the index is not judged a second time (at 100,000 files, a copy of the whole index).
        mutating func replaceIndex(_ entries: [CacheEntry], judgedUnder abi: EngineABI.Resolution) {
            engineABI = abi
            replaceIndex(entries)
        }

        mutating func replaceIndex(_ entries: [CacheEntry]) {
            // One walk for the index, the continued names and the bytes: at start-up this is 100,000 entries.
            var fresh = [String: CacheEntry](minimumCapacity: entries.count)
            var continued = Set<String>()
            var bytes: UInt64 = 0
            for e in entries where fresh[e.fileName] == nil {
                fresh[e.fileName] = e
                bytes += e.fileSize
                if e.header?.reason == .continued { continued.insert(e.fileName) }
            }
            index = fresh
            continuedNames = continued
            totalBytes = bytes
            verdicts = verdicts.filter { index[$0.key] != nil }
            supersededBy = supersededBy.filter { index[$0.key] != nil }
            for name in records.keys where index[name] == nil {
                records.removeValue(forKey: name)
                dirtyRecords.insert(name)
            }
            passOrderFor = nil // counted again from the new index when next asked
            recount()
        }

        /// A checkpoint appeared: if the daemon evicted it within the window, that eviction was a regret.
        mutating func noteArrival(_ name: String, bytes: UInt64, now: Double) -> RegretRecord? {
            guard let e = recentEvictions.removeValue(forKey: name) else { return nil }
            dirtyEvictions.insert(name)
            guard now - e.at <= config.regretWindowHours * 3600 else { return nil }
            let r = RegretRecord(at: now, file: name, bytes: bytes, afterSeconds: now - e.at)
            regretLog.append(r)
            regretLog.removeAll { now - $0.at > 7 * 86400 }
            return r  // counted by the recorder's `regret` event
        }

        mutating func noteEviction(_ name: String, bytes: UInt64, now: Double) {
            recentEvictions[name] = EvictionRecord(at: now, bytes: bytes)
            dirtyEvictions.insert(name)
            let window = config.regretWindowHours * 3600
            if recentEvictions.count > 10_000 || recentEvictions.values.contains(where: { now - $0.at > window }) {
                for (n, e) in recentEvictions where now - e.at > window {
                    recentEvictions.removeValue(forKey: n)
                    dirtyEvictions.insert(n)
                }
            }
        }

        /// The walk of the pass in progress, built for it when a pass starts, ends, is cancelled or resumed after a
        /// restart (all of which change `scrub.passStartedAt`), or after the index was replaced wholesale.
        private mutating func syncPassOrder() {
            guard passOrderFor != scrub.passStartedAt else { return }
            passOrder.rebuild(index: index, cursor: scrub.cursor, active: scrub.passStartedAt != nil)
            passOrderFor = scrub.passStartedAt
        }

        /// A pass is in progress and `passOrder` walks it: index changes must be told to it
        /// (otherwise it is rebuilt from the index when next asked).
        private var walkingPass: Bool { passOrderFor != nil && passOrderFor == scrub.passStartedAt }

        /// The next file of the pass in progress: the first name after the cursor.
        mutating func nextInPass() -> String? {
            syncPassOrder()
            return passOrder.next(index: index, cursor: scrub.cursor)
        }

        /// The pass in progress finished `name`: the cursor moves past it.
        mutating func advancePass(to name: String) {
            syncPassOrder()
            passOrder.advanced(from: scrub.cursor, to: name, index: index)
            scrub.cursor = name
        }

        /// Files of the pass in progress, done and still to do.
        var passFilesTotal: Int { mutating get { syncPassOrder(); return scrub.filesDone + passOrder.leftFiles } }

        /// Bytes the pass in progress has still to read.
        var passBytesLeft: UInt64 { mutating get { syncPassOrder(); return passOrder.leftBytes } }

        /// Seconds the pass in progress has spent paused, the current pause included.
        func pausedSecondsInPass(now: Double) -> Double {
            var paused = scrub.pausedSeconds ?? 0
            if scrub.paused == true, let at = scrub.pausedAt, let started = scrub.passStartedAt { paused += max(0, now - max(at, started)) }
            return paused
        }

        mutating func noteError(_ message: String) {
            counters.errors += 1
            lastErrors.append("\(Int(clock.now())) \(message)")
            if lastErrors.count > 10 { lastErrors.removeFirst(lastErrors.count - 10) }
        }
    }

    private let inner: Mutex<Inner>
    /// The time of day for every part (`DaemonClock`): the system's, or a test's.
    public let clock: any DaemonClock

    public init(config: DaemonConfig, clock: any DaemonClock = SystemClock()) {
        self.clock = clock
        inner = Mutex(Inner(config: config, clock: clock))
    }

    public func with<T>(_ body: (inout Inner) -> T) -> T { inner.withLock { body(&$0) } }

    public var config: DaemonConfig { with { $0.config } }
}

/// Set once, when the daemon is asked to stop; read by every loop.
public final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public var isSet: Bool { flag.load(ordering: .acquiring) }
    public func set() { flag.store(true, ordering: .releasing) }
}

extension DaemonState.Inner {
    /// An empty state under `config`, started now by `clock`.
    public init(config: DaemonConfig, clock: any DaemonClock = SystemClock()) {
        self.init(config: config, clock: clock, startedAt: clock.now())
    }

    /// A file queued for its second look by the pass in progress.
    mutating func suspectedInPass(_ name: String) {
        guard let pass = scrub.passStartedAt else { return }
        if pendingPass[name] == nil { scrub.suspected = (scrub.suspected ?? 0) + 1 }
        pendingPass[name] = pass
    }

    /// The second look of `name` settled: confirmed (removed or kept) or not. A pass that has
    /// already ended gets the outcome in its summary; a pass still running counts it as it goes.
    mutating func secondLookSettled(_ name: String, confirmed: Bool, removed: Bool) {
        guard let pass = pendingPass.removeValue(forKey: name), var last = scrub.lastPass,
              abs(last.startedAt - pass) < 0.000_001 else { return }
        last.pendingSecondLooks = max(0, (last.pendingSecondLooks ?? 0) - 1)
        if confirmed {
            last.corruptFound += 1
            if removed { last.removed += 1 } else { last.kept = (last.kept ?? 0) + 1 }
        }
        scrub.lastPass = last
    }

    /// Second looks still owed to the pass that started at `pass`.
    func pendingSecondLooks(of pass: Double) -> Int {
        pendingPass.values.filter { abs($0 - pass) < 0.000_001 }.count
    }
}
