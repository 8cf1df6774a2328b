import KVCFormat

/// The engine generations the simulator can play (kvc-format.md revision 2,
/// "Engine generations"). Which one writes decides header bytes 7 and 20 and
/// what the engine refuses or removes on load:
///
/// - `pr146`: upstream ds4 with PR #146. Writes v2 (or v1), model_id 0 and
///   payload ABI 0, never reads byte 20; unlinks a v2 file whose CRCs do not
///   hold when a load reaches it.
/// - `kvstore`: the shared-kvstore engine of ../shared/reference. Writes v1,
///   its model id and ABI 2, refuses any other ABI, never unlinks on load.
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

    /// Whether a load that finds `header`'s file corrupt unlinks it (PR #146 does, for v2 only).
    public func unlinksOnCorruptLoad(version: UInt8?) -> Bool { self == .pr146 && version == 2 }
}
