import Foundation
import KVCFormat
import KVScrubControl
import Logging
import NIOConcurrencyHelpers
#if canImport(Glibc)
import Glibc
#endif

/// Keeps the cache under its byte budget and, optionally, the file system
/// above a free-space floor, deciding from the in-memory index alone.
///
/// The order is ds4's (`EvictionPlan`): lowest score first, incompatible and
/// unreadable files (score 0) before anything the engine can use. Two causes:
///
/// - budget: total bytes above `budget_mb`. Checked on every arrival and on a
///   timer, since hit decay moves scores even when nothing happens. When a
///   checkpoint has just arrived, the pass is the engine's pre-store pass:
///   the newcomer is not a candidate, its size is the room to make, and a
///   continued waypoint it supersedes is scored down as ds4 does.
/// - free space, cachefilesd-style: below `free_space_start_percent` free,
///   cull until `free_space_stop_percent` is free again; the gap between the
///   two is the hysteresis that keeps it from flapping at the threshold.
///
/// Besides: files of a superseded engine generation (`GenerationCensus`) are
/// reclaimed, oldest first, once the grace period has passed, budget or not;
/// ds4-agent's saved sessions are never evicted for budget, space or score.
///
/// A victim that cannot be removed (permissions, busy, already gone) is logged
/// and skipped; the pass goes on with the next one, so one stuck file never
/// stalls eviction. Removal checks the inode first (`CacheDirectory.remove`).
final class Evictor: Sendable {
    /// The index maintainer's state, which eviction changes (the index, the ledger, the free space).
    let state: PartState<IndexState>
    let settings: DaemonSettings
    let logger: Logger
    /// Where this part reports what happened (logged and counted in one place).
    let events: EventRecorder
    /// Where each eviction goes into the history (`kvscrubd history`).
    let history: @Sendable (HistoryEvent) -> Void
    /// Holds `culling` (free-space hysteresis) between passes.
    private let culling = NIOLockedValueBox(false)
    /// Single evictions log at info; this says at notice, every `summarySeconds`, what went.
    private let summary: NIOLockedValueBox<EvictionSummary>
    /// How often the notice-level summary of evictions is logged (when there were any). Tests see
    /// the ten minutes go by on a `ManualClock` (`EvictionSummaryTests`).
    static let summarySeconds = 600.0

    init(state: PartState<IndexState>, settings: DaemonSettings, events: EventRecorder, logger: Logger,
                history: @escaping @Sendable (HistoryEvent) -> Void = { _ in }) {
        self.state = state
        self.settings = settings
        self.logger = logger
        self.events = events
        self.history = history
        summary = NIOLockedValueBox(EvictionSummary(interval: Self.summarySeconds, now: settings.clock.now()))
    }

    var clock: any DaemonClock { settings.clock }

    /// Seconds until the eviction summary is due (the maintenance loop wakes for it); nil: nothing to summarize.
    func summaryDueIn() -> Double? {
        let now = clock.now()
        return summary.withLockedValue { $0.dueIn(now: now) }
    }

    /// Logs the summary of the evictions of the last window when it is over (the maintenance loop asks).
    func summarizeIfDue() {
        let now = clock.now()
        guard let event = summary.withLockedValue({ $0.due(now: now) }) else { return }
        events.record(event)
    }

    enum Cause: String, Sendable {
        case budget, freeSpace = "free-space", incompatible, superseded

        /// The cause as the history keeps it.
        var history: HistoryEvent.Cause {
            switch self {
            case .budget: .budget
            case .freeSpace: .freeSpace
            case .incompatible: .incompatible
            case .superseded: .superseded
            }
        }
    }

    /// One evaluation. `arrived`: a checkpoint that just appeared (not a candidate; judged as the incoming store).
    func evaluate(directory: CacheDirectory, arrived: String? = nil) {
        let now = UInt64(clock.now())
        let config = settings.config
        // What an arrival costs must not grow with the index: the whole index is copied only when
        // something has to be evicted (over budget), and the arrival's text is read only when there
        // are continued waypoints it may supersede, or an eviction plan to weigh it in.
        let (total, newcomer, waypoints) = state.read { s in
            (s.index.totalBytes, arrived.flatMap { s.index[$0] }, s.index.continuedNames.compactMap { n in n == arrived ? nil : s.index[n] })
        }
        let overBudget = config.budgetMB > 0 && total > config.budgetBytes
        var incoming: IncomingCheckpoint? = nil
        func readIncoming() {
            guard incoming == nil, let arrived, let newcomer, let h = newcomer.header, let text = directory.text(named: arrived) else { return }
            incoming = IncomingCheckpoint(text: text, modelID: h.modelID, quantBits: h.quantBits, ctxSize: h.ctxSize, rejectDifferentQuant: false)
        }
        if !waypoints.isEmpty {
            readIncoming()
            // Remembered for `entries` and `explain`: which waypoints this arrival dominates.
            if let arrived, let inc = incoming {
                let dominated = waypoints.filter { inc.supersedes($0) }.map(\.fileName)
                if !dominated.isEmpty { state.change { s in for d in dominated { s.index.supersededBy[d] = arrived } } }
            }
        }
        var entries = overBudget ? state.read { Array($0.index.entries.values) } : []
        // Bytes to free for the budget. A checkpoint larger than the whole budget evicts
        // nothing else: the engine's `extra_bytes > budget_bytes` guard (no amount of
        // eviction could make room for it). Only an engine with a larger budget of its
        // own writes one; it is left out of the budget's sum, and the budget is kept
        // for the rest.
        var needBudget: UInt64 = 0
        let oversized = overBudget ? entries.filter { $0.fileSize > config.budgetBytes } : []
        if let a = arrived, let big = oversized.first(where: { $0.fileName == a }) {
            events.record(DaemonEvent(.oversizedArrival, .warning, "a checkpoint larger than the whole budget arrived; evicting nothing for it",
                                      ["file": "\(a)", "bytes": "\(big.fileSize)", "budget": "\(config.budgetBytes)"]))
        }
        let budgeted = total - oversized.reduce(0) { $0 + $1.fileSize }
        if overBudget && budgeted > config.budgetBytes {
            needBudget = budgeted - config.budgetBytes
        }
        // Bytes to free for the free-space floor.
        var needSpace: UInt64 = 0
        if let start = config.freeSpaceStartPercent, let stop = config.freeSpaceStopPercent,
           let (free, size) = Evictor.freeSpace(directory: directory), size > 0 {
            state.change { $0.freeBytes = free; $0.fsBytes = size }
            let pct = Double(free) * 100 / Double(size)
            let active = culling.withLockedValue { c -> Bool in
                if pct < start { c = true } else if pct >= stop { c = false }
                return c
            }
            let target = UInt64((stop / 100 * Double(size)).rounded(.up))
            if active && target > free { needSpace = target - free }
        } else if let (free, size) = Evictor.freeSpace(directory: directory) {
            state.change { $0.freeBytes = free; $0.fsBytes = size }
        }
        guard needBudget > 0 || needSpace > 0 else { return }
        if entries.isEmpty { entries = state.read { Array($0.index.entries.values) } }
        readIncoming()
        // ds4-agent's saved sessions are a user's explicit saves, not cache: never evicted by budget or score.
        let candidates = entries.filter { $0.fileName != arrived && !$0.isAgentSession }
        if needBudget > 0 {
            events.record(DaemonEvent(.budgetExceeded, .info, "over budget",
                                      ["bytes": "\(total)", "budget": "\(config.budgetBytes)", "excess": "\(needBudget)"]))
        }
        let order = EvictionPlan.order(entries: needSpace > 0 ? candidates : candidates.filter { c in !oversized.contains { $0.fileName == c.fileName } },
                                       now: now, incoming: incoming)
        var freed: UInt64 = 0
        // Once the stop threshold is reached, culling is over until free space falls below the start again.
        defer { if needSpace > 0 && freed >= needSpace { culling.withLockedValue { $0 = false } } }
        for v in order {
            guard freed < max(needBudget, needSpace) else { break }
            let e = v.entry
            let cause: Cause = e.unusable != nil ? .incompatible : (freed < needBudget ? .budget : .freeSpace)
            let meta: Logger.Metadata = [
                "file": "\(e.fileName)", "cause": "\(cause.rawValue)",
                "score": "\(v.score)", "bytes": "\(e.fileSize)", "tokens": "\(e.header?.tokens ?? 0)", "hits": "\(e.header?.hits ?? 0)",
            ]
            if config.dryRun {
                events.record(DaemonEvent(.wouldEvict, .info, "would evict (dry run)", meta))
                summary.withLockedValue { $0.add(cause, bytes: e.fileSize, dryRun: true) }
                freed += e.fileSize
                continue
            }
            do {
                switch try directory.remove(name: e.fileName, identity: e.identity) {
                case .removed:
                    freed += e.fileSize
                    events.record(DaemonEvent(.evicted, .info, "evicted", meta, counts: .evicted(cause, bytes: e.fileSize)), changing: state) { s in
                        s.index.remove(e.fileName)
                        if cause != .incompatible {
                            s.ledger.noteEviction(e.fileName, bytes: e.fileSize, now: Double(now), window: config.regretWindowHours * 3600)
                        }
                    }
                    summary.withLockedValue { $0.add(cause, bytes: e.fileSize, dryRun: false) }
                    history(HistoryEvent(at: Double(now), action: .evicted, file: e.fileName, bytes: e.fileSize, cause: cause.history,
                                         detail: e.unusable ?? String(format: "score %.6g", v.score)))
                case .vanished:
                    state.change { _ = $0.index.remove(e.fileName) }
                    freed += e.fileSize
                case .replaced:
                    logger.info("eviction skipped: the file was replaced since it was scored", metadata: ["file": "\(e.fileName)"])
                }
            } catch {
                events.record(DaemonEvent(.evictFailed, .error, "cannot evict; skipping it", ["file": "\(e.fileName)", "error": "\(error)"],
                                          counts: .error("evict \(e.fileName): \(error)")))
            }
        }
    }

    /// Reclaims the files of superseded generations (`superseded_grace_hours`), oldest first:
    /// never an unknown layout, never a ds4-agent session. Returns how many files went.
    @discardableResult
    func reclaimSuperseded(directory: CacheDirectory) -> Int {
        let now = clock.now()
        let config = settings.config
        let victims = state.read { s in
            // Only a file the engine in force cannot use can be of a superseded generation: while there is
            // none (the census keeps the count), the index is not walked at all.
            guard s.index.census.incompatible > 0 else { return [CacheEntry]() }
            return GenerationCensus.reclaimable(entries: Array(s.index.entries.values), engine: s.index.engineABI.generation,
                                                graceSeconds: config.supersededGraceHours.map { $0 * 3600 }, now: now)
        }
        var reclaimed = 0
        for e in victims {
            let g = e.generation.map { "\($0)" } ?? "?"
            let meta: Logger.Metadata = ["file": "\(e.fileName)", "cause": "superseded", "generation": "\(g)", "bytes": "\(e.fileSize)"]
            if config.dryRun {
                events.record(DaemonEvent(.wouldEvict, .info, "would reclaim a superseded generation's file (dry run)", meta))
                continue
            }
            do {
                switch try directory.remove(name: e.fileName, identity: e.identity) {
                case .removed:
                    reclaimed += 1
                    events.record(DaemonEvent(.supersededReclaimed, .notice, "reclaimed a file of a superseded engine generation", meta,
                                              counts: .evicted(.superseded, bytes: e.fileSize)), changing: state) { s in s.index.remove(e.fileName) }
                    summary.withLockedValue { $0.add(.superseded, bytes: e.fileSize, dryRun: false) }
                    history(HistoryEvent(at: now, action: .evicted, file: e.fileName, bytes: e.fileSize, cause: .superseded,
                                         detail: "generation \(g) superseded"))
                case .vanished:
                    state.change { _ = $0.index.remove(e.fileName) }
                case .replaced:
                    logger.info("reclaim skipped: the file was replaced since it was judged", metadata: ["file": "\(e.fileName)"])
                }
            } catch {
                events.record(DaemonEvent(.evictFailed, .error, "cannot reclaim; skipping it", ["file": "\(e.fileName)", "error": "\(error)"],
                                          counts: .error("reclaim \(e.fileName): \(error)")))
            }
        }
        return reclaimed
    }

    /// Free and total bytes of the file system holding the directory.
    static func freeSpace(directory: CacheDirectory) -> (UInt64, UInt64)? {
        var s = statvfs()
        guard fstatvfs(directory.fd.rawValue, &s) == 0 else { return nil }
        return (UInt64(s.f_bavail) * UInt64(s.f_frsize), UInt64(s.f_blocks) * UInt64(s.f_frsize))
    }
}
