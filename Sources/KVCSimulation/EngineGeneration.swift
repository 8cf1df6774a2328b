import KVCFormat

/// The engine generations the simulator can play (kvc-format.md revision 3,
/// "Engine generations"). Which one writes decides header bytes 7 and 20, the
/// payload version, and what the engine refuses or removes on load:
///
/// - `pr146`: ds4 before e8e8779 with PR #146. Writes v2 (or v1), model_id 0,
///   payload ABI 0 and payload version 1, never reads byte 20; unlinks a v2
///   file whose CRCs do not hold when a load reaches it.
/// - `kvstore`: ds4 from e8e8779 (../shared/reference/ds4-e8e8779). Writes v1,
///   its model id, ABI 2 and payload version 2, refuses any other ABI or
///   payload version, never unlinks on load.
public enum EngineGeneration: String, Sendable, CaseIterable, Codable {
    case pr146
    case kvstore

    /// The generation that writes `version` when none is named: v2 only exists in PR #146.
    public static func writing(version: UInt8) -> EngineGeneration { version == 2 ? .pr146 : .kvstore }

    /// Header byte 7 for an engine whose model id is `modelID`.
    public func modelByte(_ modelID: UInt8) -> UInt8 { self == .pr146 ? 0 : modelID }

    /// Header byte 20.
    public var payloadABI: UInt8 { self == .pr146 ? KVCHeader.pr146PayloadABI : KVCHeader.kvstorePayloadABI }

    /// The ABI this generation requires of files it loads; nil: it never reads byte 20.
    public var requiredABI: UInt8? { self == .pr146 ? nil : KVCHeader.kvstorePayloadABI }

    /// The DSV4 payload version it writes and requires (`DS4_SESSION_PAYLOAD_VERSION`).
    public var payloadVersion: UInt32 { self == .pr146 ? 1 : 2 }

    /// This generation as the format module names it, for judging files the way it would.
    public var generation: Generation { self == .pr146 ? .pr146 : .ds4e8e8779 }

    /// Whether a load that finds `header`'s file corrupt unlinks it (PR #146 does, for v2 only).
    public func unlinksOnCorruptLoad(version: UInt8?) -> Bool { self == .pr146 && version == 2 }
}
