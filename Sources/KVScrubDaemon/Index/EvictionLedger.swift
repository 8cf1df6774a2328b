/// The daemon's evictions within the regret window, and the regrets of the
/// last week: an evicted checkpoint the engine wrote again soon after says
/// the budget is too small (`status` advice). Kept by the index maintainer
/// (`IndexState`), persisted in the state database.
public struct EvictionLedger: Sendable {
    /// A checkpoint the daemon evicted, kept for the regret window.
    public struct Eviction: Codable, Sendable, Equatable {
        public var at: Double
        public var bytes: UInt64
        public init(at: Double, bytes: UInt64) { self.at = at; self.bytes = bytes }
    }

    /// An evicted checkpoint the engine wrote again within the window.
    public struct Regret: Codable, Sendable, Equatable {
        public var at: Double
        public var file: String
        public var bytes: UInt64
        /// Seconds between the eviction and the file's return.
        public var afterSeconds: Double
    }

    /// Evictions within the regret window, by file name (persisted).
    private(set) var recent: [String: Eviction] = [:]
    /// Regrets of the last week (persisted).
    private(set) var regrets: [Regret] = []
    /// Names whose eviction changed since the last save.
    private var dirty: Set<String> = []

    init() {}

    /// What the state database kept (start-up).
    mutating func restore(recent: [String: Eviction], regrets: [Regret]) {
        self.recent = recent
        self.regrets = regrets
    }

    /// A checkpoint appeared: if the daemon evicted it within `window` seconds, that eviction was a regret.
    mutating func noteArrival(_ name: String, bytes: UInt64, now: Double, window: Double) -> Regret? {
        guard let e = recent.removeValue(forKey: name) else { return nil }
        dirty.insert(name)
        guard now - e.at <= window else { return nil }
        let r = Regret(at: now, file: name, bytes: bytes, afterSeconds: now - e.at)
        regrets.append(r)
        regrets.removeAll { now - $0.at > 7 * 86400 }
        return r  // counted by the recorder's `regret` event
    }

    mutating func noteEviction(_ name: String, bytes: UInt64, now: Double, window: Double) {
        recent[name] = Eviction(at: now, bytes: bytes)
        dirty.insert(name)
        if recent.count > 10_000 || recent.values.contains(where: { now - $0.at > window }) {
            for (n, e) in recent where now - e.at > window {
                recent.removeValue(forKey: n)
                dirty.insert(n)
            }
        }
    }

    /// Regrets within the last day.
    func regretsLastDay(now: Double) -> [Regret] { regrets.filter { now - $0.at <= 86400 } }

    /// The evictions that changed since the last save, for the state database; clears the marks.
    mutating func takeChanges() -> [StateDatabase.Change] {
        defer { dirty.removeAll(keepingCapacity: true) }
        return dirty.map { .eviction($0, recent[$0]) }
    }
}
