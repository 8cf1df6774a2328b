/// Which checkpoints go, in order, to bring a directory under a byte budget:
/// `ds4_kvstore_evict`'s victim order. The engine repeatedly removes the
/// lowest score, the older `last_used` first on equal scores; scores do not
/// depend on which other files remain, so sorting once gives the same order.
/// Remaining ties are broken by name so two runs always agree.
public struct EvictionPlan: Sendable {
    public struct Victim: Sendable {
        public var entry: CacheEntry
        public var score: Double
    }

    public var victims: [Victim]
    public var totalBytes: UInt64
    public var targetBytes: UInt64
    /// Bytes after the victims are gone.
    public var remainingBytes: UInt64

    /// - Parameters:
    ///   - budgetBytes: the byte budget; 0 means no budget (nothing to evict), as in ds4.
    ///   - extraBytes: room to make for a checkpoint about to be stored.
    public static func make(entries: [CacheEntry], budgetBytes: UInt64, extraBytes: UInt64 = 0,
                            now: UInt64, incoming: IncomingCheckpoint? = nil) -> EvictionPlan {
        let total = entries.reduce(UInt64(0)) { $0 + $1.fileSize }
        guard budgetBytes > 0, extraBytes <= budgetBytes else {
            return EvictionPlan(victims: [], totalBytes: total, targetBytes: budgetBytes, remainingBytes: total)
        }
        let target = budgetBytes - extraBytes
        var remaining = total
        var victims: [Victim] = []
        if total > target {
            for v in order(entries: entries, now: now, incoming: incoming) {
                guard remaining > target else { break }
                victims.append(v)
                remaining -= min(remaining, v.entry.fileSize)
            }
        }
        return EvictionPlan(victims: victims, totalBytes: total, targetBytes: target, remainingBytes: remaining)
    }

    /// Every entry in eviction order, first to go first.
    public static func order(entries: [CacheEntry], now: UInt64, incoming: IncomingCheckpoint? = nil) -> [Victim] {
        entries.map { Victim(entry: $0, score: EvictionScore.score($0, now: now, incoming: incoming)) }
            .sorted(by: goesFirst)
    }

    static func goesFirst(_ a: Victim, _ b: Victim) -> Bool {
        if a.score != b.score { return a.score < b.score }
        let la = a.entry.header?.lastUsed ?? 0
        let lb = b.entry.header?.lastUsed ?? 0
        if la != lb { return la < lb }
        return a.entry.sha < b.entry.sha
    }
}
