import Foundation
import KVCFormat

/// The control socket's protocol: one JSON object per line each way.
/// Request: `{"cmd":"status"}`; reply: `{"ok":true,"status":{...}}` or
/// `{"ok":false,"error":"..."}`. Unknown commands and malformed lines get an
/// error reply and the connection stays usable.
public struct ControlRequest: Codable, Sendable {
    public var cmd: String
    public var files: [String]?
    public init(cmd: String, files: [String]? = nil) { self.cmd = cmd; self.files = files }
}

public struct ControlResponse: Codable, Sendable {
    public var ok: Bool
    public var error: String?
    public var status: StatusReport?
    public var entries: [EntryReport]?

    public static func failure(_ message: String) -> ControlResponse { ControlResponse(ok: false, error: message) }
}

public struct StatusReport: Codable, Sendable {
    public struct Scrub: Codable, Sendable {
        public var active: Bool
        public var filesDone: Int
        public var filesTotal: Int
        public var bytesDone: UInt64
        public var bytesTotal: UInt64
        public var rateBytesPerSecond: Double
        public var limitMBps: Double
        public var etaSeconds: Double?
        public var current: String?
        public var passStartedAt: Double?
        public var nextPassAt: Double?
        public var lastPass: DaemonState.PassSummary?
    }

    public var state: String
    public var pid: Int32
    public var version: String
    public var uptimeSeconds: Double
    public var cacheDir: String
    public var files: Int
    public var bytes: UInt64
    public var budgetBytes: UInt64
    public var freeBytes: UInt64?
    public var filesystemBytes: UInt64?
    public var dryRun: Bool
    public var incompatibleFiles: Int
    public var scrub: Scrub
    public var counters: DaemonState.Counters
    public var lastErrors: [String]
}

public struct EntryReport: Codable, Sendable {
    public var rank: Int
    public var name: String
    public var version: UInt8?
    public var reason: String?
    public var tokens: UInt32?
    public var hits: UInt32?
    public var size: UInt64
    public var lastUsed: UInt64?
    public var score: Double
    public var effectiveHits: Double
    public var idleSeconds: UInt64?
    public var tokensPerByte: Double
    public var anchorFactor: Double
    public var unusable: String?
}

public enum DaemonVersion {
    public static let string = "0.1.0"
}
