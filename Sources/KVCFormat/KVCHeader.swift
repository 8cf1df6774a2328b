/// The fixed prologue of a KVC file: the engine's 48-byte header, then in v1
/// the text length (52 bytes in all), in v2 (ds4 PR #146) the four CRC32C
/// fields and then the text length (68 bytes): kvc-format.md revision 2,
/// "Layout". v2: header_crc 48, text_crc 52, payload_crc 56, toolmap_crc 60,
/// text_bytes 64.
///
/// Decoding never validates: it only needs the bytes to be there. Whether the
/// values make sense (tokens, quant bits, ABI, header CRC) is the
/// `Verifier`'s verdict, so a damaged header can still be shown by `inspect`.
public struct KVCHeader: Sendable, Equatable {
    public static let magic: [UInt8] = Array("KVC".utf8)
    /// The engine's fixed header (`DS4_KVSTORE_FIXED_HEADER`): what a v1 touch rewrites.
    public static let fixedSize = 48
    public static let v1PrologueSize = 52
    public static let v2PrologueSize = 68
    /// Bytes 0..63 (with 48..51 zeroed), then text_bytes: what the v2 header CRC covers.
    static let v2HeaderSize = 64
    static let headerCRCOffset = 48
    /// The payload ABI of the shared-kvstore engine (byte 20); PR #146's
    /// upstream engine writes 0. Which one is in force is `EngineABI`'s job:
    /// nothing here decides it.
    public static let kvstorePayloadABI: UInt8 = 2
    public static let pr146PayloadABI: UInt8 = 0
    /// ext_flags bit 0: a tool-id map trailer follows the payload.
    public static let extToolMap: UInt8 = 1 << 0
    public static let extResponsesVisible: UInt8 = 1 << 1
    public static let extThinkingVisible: UInt8 = 1 << 2
    /// ext_flags bit 3: ds4-agent's session-title trailer follows the payload, and the file
    /// is named after the title and created_at rather than the text.
    public static let extSessionTitle: UInt8 = 1 << 3

    public var version: UInt8
    public var quantBits: UInt8
    /// The raw reason byte; `reason` maps unknown values to `.unknown` as the engine does.
    public var reasonCode: UInt8
    public var extFlags: UInt8
    public var modelID: UInt8
    public var tokens: UInt32
    public var hits: UInt32
    public var ctxSize: UInt32
    public var payloadABI: UInt8
    /// Bytes 21..23 as a little-endian 24-bit value; writers keep it 0.
    public var reserved: UInt32
    public var createdAt: UInt64
    public var lastUsed: UInt64
    public var payloadBytes: UInt64
    public var textBytes: UInt32
    // v2 only; 0 in v1.
    public var textCRC: UInt32
    public var payloadCRC: UInt32
    public var trailerCRC: UInt32
    public var headerCRC: UInt32

    public init(
        version: UInt8 = 2, quantBits: UInt8, reason: KVCReason, extFlags: UInt8 = 0, modelID: UInt8,
        tokens: UInt32, hits: UInt32 = 0, ctxSize: UInt32, payloadABI: UInt8 = KVCHeader.kvstorePayloadABI,
        createdAt: UInt64, lastUsed: UInt64, payloadBytes: UInt64, textBytes: UInt32
    ) {
        self.version = version
        self.quantBits = quantBits
        self.reasonCode = reason.rawValue
        self.extFlags = extFlags
        self.modelID = modelID
        self.tokens = tokens
        self.hits = hits
        self.ctxSize = ctxSize
        self.payloadABI = payloadABI
        self.reserved = 0
        self.createdAt = createdAt
        self.lastUsed = lastUsed
        self.payloadBytes = payloadBytes
        self.textBytes = textBytes
        self.textCRC = 0
        self.payloadCRC = 0
        self.trailerCRC = 0
        self.headerCRC = 0
    }

    public var reason: KVCReason { KVCReason(code: reasonCode) }
    public var hasToolMap: Bool { extFlags & KVCHeader.extToolMap != 0 }
    public var hasSessionTitle: Bool { extFlags & KVCHeader.extSessionTitle != 0 }
    /// A ds4-agent save (reason agent-system or agent-session, or a session title): a user's, not cache.
    public var isAgentSession: Bool { hasSessionTitle || reason == .agentSystem || reason == .agentSession }
    public var isV2: Bool { version == 2 }

    /// Where the text starts: 52 in v1, 68 in v2.
    public var prologueSize: Int { KVCHeader.prologueSize(version: version) }

    /// What an in-place touch or header rewrite writes: the engine's 48 bytes
    /// in v1, 64 in v2 (the header CRC covers `hits` and `last_used`; the
    /// text length after it never changes).
    public var touchSize: Int { version == 2 ? KVCHeader.v2HeaderSize : KVCHeader.fixedSize }

    public static func prologueSize(version: UInt8) -> Int {
        version == 2 ? v2PrologueSize : v1PrologueSize
    }

    /// Offset just past the payload, or nil when the lengths overflow 64 bits
    /// (only a damaged header can say so).
    public var bodyEnd: UInt64? {
        let (a, o1) = UInt64(prologueSize).addingReportingOverflow(UInt64(textBytes))
        let (b, o2) = a.addingReportingOverflow(payloadBytes)
        return o1 || o2 ? nil : b
    }

    /// What the first bytes of a file say before any field is trusted.
    public enum Probe: Sendable, Equatable {
        case header(KVCHeader)
        /// Fewer bytes than the prologue of the version byte's layout (or than 4).
        case short(have: Int, need: Int)
        case badMagic([UInt8])
        /// Version 0 cannot be a KVC file; 3 and up are newer than we read.
        case unknownVersion(UInt8)
    }

    /// Reads a prologue from the start of a file (`bytes` may be longer).
    public static func probe(_ bytes: UnsafeRawBufferPointer) -> Probe {
        guard bytes.count >= 4 else { return .short(have: bytes.count, need: 4) }
        let m = Array(bytes[0..<3])
        guard m == magic else { return .badMagic(m) }
        let version = bytes[3]
        guard version == 1 || version == 2 else { return .unknownVersion(version) }
        let need = prologueSize(version: version)
        guard bytes.count >= need else { return .short(have: bytes.count, need: need) }
        var h = KVCHeader(
            version: version, quantBits: bytes[4], reason: .unknown, extFlags: bytes[6], modelID: bytes[7],
            tokens: LE.u32(bytes, 8), hits: LE.u32(bytes, 12), ctxSize: LE.u32(bytes, 16),
            payloadABI: bytes[20], createdAt: LE.u64(bytes, 24), lastUsed: LE.u64(bytes, 32),
            payloadBytes: LE.u64(bytes, 40), textBytes: LE.u32(bytes, version == 2 ? 64 : 48))
        h.reasonCode = bytes[5]
        h.reserved = UInt32(bytes[21]) | UInt32(bytes[22]) << 8 | UInt32(bytes[23]) << 16
        if version == 2 {
            h.headerCRC = LE.u32(bytes, 48)
            h.textCRC = LE.u32(bytes, 52)
            h.payloadCRC = LE.u32(bytes, 56)
            h.trailerCRC = LE.u32(bytes, 60)
        }
        return .header(h)
    }

    public static func probe(_ bytes: [UInt8]) -> Probe {
        bytes.withUnsafeBytes { probe($0) }
    }

    /// The prologue's bytes exactly as stored: fields as they are, the v2
    /// `headerCRC` as it is (use `sealed()` to recompute it).
    public func encoded() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: prologueSize)
        b[0] = 0x4B; b[1] = 0x56; b[2] = 0x43
        b[3] = version
        b[4] = quantBits
        b[5] = reasonCode
        b[6] = extFlags
        b[7] = modelID
        LE.put32(tokens, &b, 8)
        LE.put32(hits, &b, 12)
        LE.put32(ctxSize, &b, 16)
        b[20] = payloadABI
        b[21] = UInt8(truncatingIfNeeded: reserved)
        b[22] = UInt8(truncatingIfNeeded: reserved >> 8)
        b[23] = UInt8(truncatingIfNeeded: reserved >> 16)
        LE.put64(createdAt, &b, 24)
        LE.put64(lastUsed, &b, 32)
        LE.put64(payloadBytes, &b, 40)
        if version == 2 {
            LE.put32(headerCRC, &b, 48)
            LE.put32(textCRC, &b, 52)
            LE.put32(payloadCRC, &b, 56)
            LE.put32(trailerCRC, &b, 60)
            LE.put32(textBytes, &b, 64)
        } else {
            LE.put32(textBytes, &b, 48)
        }
        return b
    }

    /// PR #146's header CRC as these fields encode it: CRC32C over the 64
    /// header bytes with the header_crc field (48..51) taken as zero,
    /// continued over the 4 bytes of text_bytes (64..67).
    public var computedHeaderCRC: UInt32 {
        var b = encoded()
        if b.count < KVCHeader.v2PrologueSize { b += [UInt8](repeating: 0, count: KVCHeader.v2PrologueSize - b.count) }
        for i in 0..<4 { b[KVCHeader.headerCRCOffset + i] = 0 }
        var crc = CRC32C()
        b.withUnsafeBytes { raw in
            crc.update(UnsafeRawBufferPointer(rebasing: raw[0..<KVCHeader.v2HeaderSize]))
            crc.update(UnsafeRawBufferPointer(rebasing: raw[KVCHeader.v2HeaderSize..<KVCHeader.v2PrologueSize]))
        }
        return crc.value
    }

    /// This header with its v2 header CRC recomputed (v1 has none).
    public func sealed() -> KVCHeader {
        guard version == 2 else { return self }
        var h = self
        h.headerCRC = computedHeaderCRC
        return h
    }
}
