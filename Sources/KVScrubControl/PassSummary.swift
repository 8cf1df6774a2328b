/// A finished scrub pass, as `status` and `scrub start --wait` report it.
public struct PassSummary: Codable, Sendable, Equatable {
    public init(startedAt: Double, endedAt: Double, files: Int, bytes: UInt64, corruptFound: Int, removed: Int,
                suspected: Int? = nil, pendingSecondLooks: Int? = nil, kept: Int? = nil) {
        self.startedAt = startedAt
        self.endedAt = endedAt
        self.files = files
        self.bytes = bytes
        self.corruptFound = corruptFound
        self.removed = removed
        self.suspected = suspected
        self.pendingSecondLooks = pendingSecondLooks
        self.kept = kept
    }

    public var startedAt: Double
    public var endedAt: Double
    public var files: Int
    public var bytes: UInt64
    public var corruptFound: Int
    public var removed: Int
    /// Files a first look in this pass found corrupt (each then waits for its second look).
    public var suspected: Int?
    /// Of those, second looks still to come: the pass's verdict is final only when this is 0.
    public var pendingSecondLooks: Int?
    /// Confirmed corrupt but kept in place (the removal brake, a failed take-away).
    public var kept: Int?
}
