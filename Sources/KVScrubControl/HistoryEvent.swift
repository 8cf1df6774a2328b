
/// One line of `kvscrubd history`: a file the daemon removed, quarantined,
/// kept in place although proven corrupt, or evicted, and why.
public struct HistoryEvent: Codable, Sendable, Equatable {
    public enum Action: String, Codable, Sendable, CaseIterable {
        case removed, quarantined
        /// Proven corrupt, but could not be moved into quarantine: left under its name.
        case keptInPlace = "kept-in-place"
        case evicted
    }

    /// Why the file went: proven corrupt, or one of the eviction causes.
    public enum Cause: String, Codable, Sendable, CaseIterable {
        case corrupt
        /// Evicted to keep the byte budget.
        case budget
        /// Evicted below the free-space floor.
        case freeSpace = "free-space"
        /// Evicted first because the engine in force cannot use it.
        case incompatible
        /// An older engine generation's file, reclaimed after the upgrade's grace.
        case superseded
    }

    /// The causes' names, as `history --cause` and the control request take them.
    public static var causes: [String] { Cause.allCases.map(\.rawValue) }

    public var at: Double
    public var action: Action
    public var file: String
    public var bytes: UInt64
    public var cause: Cause
    /// For corrupt files: the region, what was wrong, and the CRCs when a checksum failed.
    public var region: String?
    public var detail: String?
    public var expectedCrc: UInt32?
    public var actualCrc: UInt32?
    /// Where a quarantined file went.
    public var destination: String?

    public init(at: Double, action: Action, file: String, bytes: UInt64, cause: Cause, region: String? = nil,
                detail: String? = nil, expectedCrc: UInt32? = nil, actualCrc: UInt32? = nil, destination: String? = nil) {
        self.at = at
        self.action = action
        self.file = file
        self.bytes = bytes
        self.cause = cause
        self.region = region
        self.detail = detail
        self.expectedCrc = expectedCrc
        self.actualCrc = actualCrc
        self.destination = destination
    }
}
