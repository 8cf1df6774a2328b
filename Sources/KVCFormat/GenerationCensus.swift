
/// Which engine generations a cache holds, and which of them are superseded.
///
/// ds4 leaves files of another generation out of its index: it never
/// restores or evicts them and they do not count against its own budget. An
/// upgrade (e8e8779 changed the payload version) therefore turns a whole
/// cache into dead weight that nothing reclaims. kvscrubd does, carefully:
///
/// - The generation in force is the engine's (`EngineABI.Resolution`). Every
///   other known generation present is a candidate; an unknown layout never
///   is (a file we cannot place may be another engine's, running now), and
///   neither is a ds4-agent session (a user's save).
/// - A candidate generation is superseded once the engine in force has
///   written a file after the candidate's last activity (the newest
///   created_at or last_used of its files: a store or a restore), and that
///   activity is older than `superseded_grace_hours` (24 by default). A second
///   engine still using the old generation keeps touching its files, so it
///   keeps them.
/// - Its files are then reclaimed oldest first (by created_at), as
///   evictions with their own cause.
///
/// Everything is decided from the index (headers and the payload tag read at
/// indexing time): no file is read to decide.
public enum GenerationCensus {
    /// One generation present in the cache, as `status` shows it.
    public struct Report: Codable, Sendable, Equatable {
        /// `1/2/2` (file version / payload ABI / payload version), or `unknown` for files no known layout places.
        public var key: String
        public var description: String
        public var files: Int
        public var bytes: UInt64
        /// Of them, ds4-agent's saved sessions (never reclaimed).
        public var agentSessions: Int
        /// The newest created_at or last_used among its files (Unix seconds); nil when unknown.
        public var newestActivity: Double?
        public var inForce: Bool
        /// Once the engine in force wrote after this generation's last activity: when it is (or was) reclaimable.
        public var reclaimAt: Double?
        public var superseded: Bool

        public init(key: String, description: String, files: Int, bytes: UInt64, agentSessions: Int, newestActivity: Double?,
                    inForce: Bool, reclaimAt: Double?, superseded: Bool) {
            self.key = key; self.description = description; self.files = files; self.bytes = bytes
            self.agentSessions = agentSessions; self.newestActivity = newestActivity; self.inForce = inForce
            self.reclaimAt = reclaimAt; self.superseded = superseded
        }
    }

    struct Group {
        var generation: Generation?
        var files: [CacheEntry] = []
        var newest: Double?
    }

    static func groups(_ entries: [CacheEntry]) -> [String: Group] {
        var out: [String: Group] = [:]
        for e in entries {
            let g = e.defect == nil ? e.generation : nil
            let key = g?.key ?? "unknown"
            // In place (`default:` subscript): a group copied out of the dictionary and stored back would
            // share its array with the dictionary's copy, and every append would copy the whole array
            // (quadratic: minutes at 100,000 files, under the index's lock).
            out[key, default: Group(generation: g)].files.append(e)
            if let h = e.header {
                let a = Double(max(h.createdAt, h.lastUsed))
                out[key]!.newest = max(out[key]!.newest ?? a, a)
            }
        }
        return out
    }

    /// The newest created_at among the files the engine in force can use.
    static func newestInForce(_ groups: [String: Group], engine: Generation) -> Double? {
        groups.values.filter { $0.generation.map { engine.refusal(of: $0) == nil } ?? false }
            .flatMap(\.files).compactMap { $0.header.map { Double($0.createdAt) } }.max()
    }

    /// When a group of another generation becomes reclaimable, or nil when it never will as things stand.
    static func reclaimAt(_ g: Group, engine: Generation?, newestInForce: Double?, grace: Double?) -> Double? {
        guard let engine, let grace, let gen = g.generation, engine.refusal(of: gen) != nil,
              let last = g.newest, let newer = newestInForce, newer > last else { return nil }
        return last + grace
    }

    public static func take(entries: [CacheEntry], engine: Generation?, graceSeconds: Double?, now: Double) -> [Report] {
        let gs = groups(entries)
        let newer = engine.flatMap { newestInForce(gs, engine: $0) }
        return gs.map { key, g in
            let at = reclaimAt(g, engine: engine, newestInForce: newer, grace: graceSeconds)
            return Report(key: key, description: g.generation.map { "\($0)" } ?? "unknown layout or unreadable",
                          files: g.files.count, bytes: g.files.reduce(0) { $0 + $1.fileSize },
                          agentSessions: g.files.filter(\.isAgentSession).count, newestActivity: g.newest,
                          inForce: g.generation.map { gen in engine.map { $0.refusal(of: gen) == nil } ?? true } ?? false,
                          reclaimAt: at, superseded: at.map { now >= $0 } ?? false)
        }.sorted { ($0.inForce ? 0 : 1, $0.key) < ($1.inForce ? 0 : 1, $1.key) }
    }

    /// The files to reclaim now: those of superseded generations, oldest first, agent sessions left alone.
    public static func reclaimable(entries: [CacheEntry], engine: Generation?, graceSeconds: Double?, now: Double) -> [CacheEntry] {
        guard engine != nil, graceSeconds != nil else { return [] }
        let gs = groups(entries)
        let newer = engine.flatMap { newestInForce(gs, engine: $0) }
        return gs.values.filter { g in reclaimAt(g, engine: engine, newestInForce: newer, grace: graceSeconds).map { now >= $0 } ?? false }
            .flatMap(\.files).filter { !$0.isAgentSession }
            .sorted { ($0.header?.createdAt ?? 0, $0.fileName) < ($1.header?.createdAt ?? 0, $1.fileName) }
    }
}
