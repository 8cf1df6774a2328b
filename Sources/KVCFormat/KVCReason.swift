/// Why the engine wrote a checkpoint (header byte 5). The engine reads any
/// value above `agentSession` as `unknown`, and so do we.
public enum KVCReason: UInt8, Sendable, CaseIterable, Codable, CustomStringConvertible {
    case unknown = 0
    case cold = 1
    case continued = 2
    case evict = 3
    case shutdown = 4
    case agentSystem = 5
    case agentSession = 6

    public init(code: UInt8) {
        self = KVCReason(rawValue: code) ?? .unknown
    }

    /// The engine's spelling (`ds4_kvstore_reason_code`), used on the command line and in JSON.
    public var name: String {
        switch self {
        case .unknown: "unknown"
        case .cold: "cold"
        case .continued: "continued"
        case .evict: "evict"
        case .shutdown: "shutdown"
        case .agentSystem: "agent-system"
        case .agentSession: "agent-session"
        }
    }

    public init?(name: String) {
        guard let r = KVCReason.allCases.first(where: { $0.name == name }) else { return nil }
        self = r
    }

    public var description: String { name }

    /// Cold/evict/shutdown checkpoints are the engine's intentional anchors and
    /// get its 2x score prior; continued ones are waypoints.
    public var isAnchor: Bool { self == .cold || self == .evict || self == .shutdown }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(name)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        let s = try c.decode(String.self)
        guard let r = KVCReason(name: s) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "unknown reason \(s)")
        }
        self = r
    }
}
