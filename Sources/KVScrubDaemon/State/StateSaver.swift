import NIOConcurrencyHelpers

/// Hands the parts' persisted state to the state database: the records and
/// the evictions that changed (always), and the state row (the scrub's
/// progress and pending second looks, the brake, the counters, the regrets)
/// at most every 2 s unless forced. Returns at once: the database merges and
/// writes on its own queue. The parts call it after their changes; it reads
/// their states, in the lock order of `PartState`, and changes only the dirty
/// marks of the index's records and the ledger.
final class StateSaver: Sendable {
    let database: StateDatabase
    let index: PartState<IndexState>
    let scrub: PartState<ScrubState>
    let counts: PartState<CounterState>
    let clock: any DaemonClock
    private let lastCore = NIOLockedValueBox(-Double.infinity)

    init(database: StateDatabase, index: PartState<IndexState>, scrub: PartState<ScrubState>,
                counts: PartState<CounterState>, clock: any DaemonClock) {
        self.database = database
        self.index = index
        self.scrub = scrub
        self.counts = counts
        self.clock = clock
    }

    /// The state row as it is now.
    func core() -> StateDatabase.Core { Self.core(index: index, scrub: scrub, counts: counts) }

    /// Everything the database holds, from memory: for a database started afresh.
    func snapshot() -> StateDatabase.Snapshot { Self.snapshot(index: index, scrub: scrub, counts: counts) }

    static func core(index: PartState<IndexState>, scrub: PartState<ScrubState>, counts: PartState<CounterState>) -> StateDatabase.Core {
        index.read { i in
            scrub.read { s in
                counts.read { c in
                    StateDatabase.Core(scrub: s.progress, counters: c.counters, brake: s.brake,
                                       pendingRemovals: s.pendingRemoval.keys.sorted(), regretLog: i.ledger.regrets)
                }
            }
        }
    }

    static func snapshot(index: PartState<IndexState>, scrub: PartState<ScrubState>, counts: PartState<CounterState>) -> StateDatabase.Snapshot {
        let (records, evictions) = index.read { ($0.index.records, $0.ledger.recent) }
        return StateDatabase.Snapshot(core: core(index: index, scrub: scrub, counts: counts), records: records, recentEvictions: evictions)
    }

    func persist(force: Bool) {
        let now = clock.now()
        let due = lastCore.withLockedValue { last -> Bool in
            if force || now - last >= 2 { last = now; return true }
            return false
        }
        var changes: [StateDatabase.Change] = due ? [.core(core())] : []
        changes += index.change { $0.index.takeRecordChanges() + $0.ledger.takeChanges() }
        database.enqueue(changes)
    }
}
