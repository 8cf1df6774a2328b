/// Which engine generation a file belongs to, or which one runs beside us
/// (kvc-format.md revision 3, "Engine generations").
///
/// Why a generation is three numbers and not one: an engine decides whether
/// it can restore a file from the file version (byte 3), the payload ABI
/// (byte 20) and the payload's own version (its second u32), and each
/// generation accepts exactly one combination:
///
/// - ds4 before e8e8779, and PR #146 on top of it: v1 or v2, byte 20 written
///   0 and never read, payload version 1;
/// - ds4 from e8e8779 (main since 2026-05-26): v1 only, byte 20 = 2 and
///   payload version 2, everything else refused.
///
/// Revision 2 of the contract knew only byte 20 and expected payload version
/// 1 for ABI 2: every checkpoint today's ds4 writes was called corrupt. So a
/// payload version is never damage here, only another generation; and the
/// table of known pairs below is a default, never a rule: the running
/// generation is learned from the engine's own newest files or pinned by an
/// operator.
public struct Generation: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The file version (1, or 2 for PR #146's layout).
    public var fileVersion: UInt8
    /// Header byte 20.
    public var payloadABI: UInt8
    /// The DSV4 payload's version; nil when the file carries no DSV4 payload
    /// prefix to read it from (a stripped agent session, a payload shorter
    /// than 8 bytes, a payload of another kind).
    public var payloadVersion: UInt32?

    // "payloadAbi": JSON coders with snake-case conversion turn it into payload_abi and back.
    enum CodingKeys: String, CodingKey {
        case fileVersion, payloadABI = "payloadAbi", payloadVersion
    }

    public init(fileVersion: UInt8, payloadABI: UInt8, payloadVersion: UInt32?) {
        self.fileVersion = fileVersion
        self.payloadABI = payloadABI
        self.payloadVersion = payloadVersion
    }

    /// ds4 from e8e8779 (antirez/ds4 main since 2026-05-26): v1, ABI 2, payload version 2.
    public static let ds4e8e8779 = Generation(fileVersion: 1, payloadABI: KVCHeader.kvstorePayloadABI, payloadVersion: 2)
    /// ds4 before e8e8779 with PR #146: v2 (and v1), ABI 0, payload version 1.
    public static let pr146 = Generation(fileVersion: 2, payloadABI: KVCHeader.pr146PayloadABI, payloadVersion: 1)

    /// The payload version the known generation with this ABI writes, when one is known.
    public static func knownPayloadVersion(abi: UInt8) -> UInt32? {
        switch abi {
        case KVCHeader.pr146PayloadABI: 1
        case KVCHeader.kvstorePayloadABI: 2
        default: nil
        }
    }

    /// The newest file version an engine writing this ABI reads, when nothing better is known:
    /// PR #146 (ABI 0) reads v1 and v2; e8e8779 (ABI 2) reads v1 only.
    public static func knownFileVersion(abi: UInt8) -> UInt8 {
        abi == KVCHeader.pr146PayloadABI ? 2 : 1
    }

    /// The generation of a file, from its header and the tag at the start of its payload.
    public init(header h: KVCHeader, payload tag: PayloadTag) {
        self.init(fileVersion: h.version, payloadABI: h.payloadABI, payloadVersion: tag.dsv4Version)
    }

    /// Why an engine of this generation cannot restore a file of `file`'s
    /// generation, or nil when it can. Never a statement about damage.
    ///
    /// - A v1-only engine (e8e8779 and before PR #146) refuses v2 files; a v2
    ///   engine (PR #146) reads v1 too.
    /// - An engine writing ABI 0 never reads byte 20 (ds4 before e8e8779), so
    ///   only a nonzero ABI is compared.
    /// - Payload versions are compared when both are known: a file with no
    ///   DSV4 prefix (a stripped session) carries none to refuse.
    public func refusal(of file: Generation) -> String? {
        if fileVersion == 1 && file.fileVersion != 1 {
            return "file version \(file.fileVersion); the engine in force reads v1 only (another engine generation)"
        }
        if payloadABI != KVCHeader.pr146PayloadABI && file.payloadABI != payloadABI {
            return "payload ABI \(file.payloadABI); the engine in force writes \(payloadABI) (another engine generation)"
        }
        if let mine = payloadVersion, let theirs = file.payloadVersion, mine != theirs {
            return "payload version \(theirs); the engine in force writes \(mine) (another engine generation)"
        }
        return nil
    }

    /// `v1 · ABI 2 · payload v2`, and which engine that is when it is a known one.
    public var description: String {
        let pv = payloadVersion.map { "payload v\($0)" } ?? "payload version not known"
        var s = "v\(fileVersion) · ABI \(payloadABI) · \(pv)"
        if payloadABI == KVCHeader.kvstorePayloadABI && payloadVersion == 2 { s += " (ds4 from e8e8779)" }
        if payloadABI == KVCHeader.pr146PayloadABI && payloadVersion == 1 { s += " (ds4 before e8e8779 / PR #146)" }
        return s
    }

    /// A short machine-readable form: `1/2/2` (file version, ABI, payload version or `-`).
    public var key: String { "\(fileVersion)/\(payloadABI)/\(payloadVersion.map(String.init) ?? "-")" }
}

/// What the first 8 bytes of a payload say: the DSV4 magic and its version,
/// another magic, or nothing (fewer than 8 bytes).
public enum PayloadTag: Sendable, Hashable {
    case dsv4(version: UInt32)
    /// A payload of the ds4 family's other kinds (`DSVL`, the per-layer payload of later code)
    /// or of a fork: `DSV` and another fourth byte.
    case otherKind(magic: UInt32)
    /// Another magic altogether.
    case foreign(magic: UInt32)
    /// Fewer than 8 payload bytes (payload_bytes 0 in a stripped agent session), or not read.
    case absent

    public var dsv4Version: UInt32? {
        if case .dsv4(let v) = self { return v }
        return nil
    }

    public init(decoding b: UnsafeRawBufferPointer, payloadBytes: UInt64) {
        guard payloadBytes >= 8, b.count >= 8 else { self = .absent; return }
        let magic = LE.u32(b, 0)
        if magic == PayloadPrefix.magicValue {
            self = .dsv4(version: LE.u32(b, 4))
        } else if magic & 0x00FF_FFFF == PayloadPrefix.magicValue & 0x00FF_FFFF {
            self = .otherKind(magic: magic)
        } else {
            self = .foreign(magic: magic)
        }
    }
}
