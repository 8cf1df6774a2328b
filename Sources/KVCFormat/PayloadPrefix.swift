/// The 13 u32 fields that open every DSV4 engine payload (kvc-format.md
/// revision 3, "The payload's own prefix"). The checker reads them to catch a
/// payload that belongs to another checkpoint or claims more than it holds,
/// which no CRC can see when the damage happened before the CRC was computed.
///
/// Which fields are evidence, and which are not: the engine writes the
/// header's tokens and ctx_size from the same session as the prefix's token
/// count (u32 7) and saved context (u32 2), so within the running generation
/// a mismatch is byte evidence. The version, layer count, head dimensions and
/// vocabulary say "another engine or model" (ds4_session_load_payload refuses
/// them as "unsupported session payload version" or "a different DS4
/// layout", and deletes nothing): never damage.
public struct PayloadPrefix: Sendable, Equatable {
    public static let size = 52
    /// ASCII "DSV4" read as a little-endian u32.
    public static let magicValue: UInt32 = 0x3456_5344
    /// The version ds4 from e8e8779 writes (`DS4_SESSION_PAYLOAD_VERSION`); 1 before it.
    public static let currentVersion: UInt32 = 2

    public var magic: UInt32 = PayloadPrefix.magicValue
    public var version: UInt32 = PayloadPrefix.currentVersion
    public var savedContext: UInt32
    public var prefillChunk: UInt32
    public var rawRingCapacity: UInt32
    public var rawWindow: UInt32
    public var compressedCapacity: UInt32
    public var tokenCount: UInt32
    public var layerCount: UInt32
    public var headDim: UInt32
    public var indexerHeadDim: UInt32
    public var vocabSize: UInt32
    public var liveRawRows: UInt32

    public init(
        version: UInt32 = PayloadPrefix.currentVersion, savedContext: UInt32, prefillChunk: UInt32, rawRingCapacity: UInt32, rawWindow: UInt32,
        compressedCapacity: UInt32, tokenCount: UInt32, layerCount: UInt32, headDim: UInt32,
        indexerHeadDim: UInt32, vocabSize: UInt32, liveRawRows: UInt32
    ) {
        self.savedContext = savedContext
        self.prefillChunk = prefillChunk
        self.rawRingCapacity = rawRingCapacity
        self.rawWindow = rawWindow
        self.compressedCapacity = compressedCapacity
        self.tokenCount = tokenCount
        self.layerCount = layerCount
        self.headDim = headDim
        self.indexerHeadDim = indexerHeadDim
        self.vocabSize = vocabSize
        self.liveRawRows = liveRawRows
        self.version = version
    }

    public init(decoding b: UnsafeRawBufferPointer) {
        precondition(b.count >= PayloadPrefix.size)
        let f = (0..<13).map { LE.u32(b, $0 * 4) }
        self.init(
            savedContext: f[2], prefillChunk: f[3], rawRingCapacity: f[4], rawWindow: f[5],
            compressedCapacity: f[6], tokenCount: f[7], layerCount: f[8], headDim: f[9],
            indexerHeadDim: f[10], vocabSize: f[11], liveRawRows: f[12])
        magic = f[0]
        version = f[1]
    }

    /// What proves this prefix wrong for a header of the running generation
    /// with `tokens`, `ctxSize` and `payloadBytes` (empty: nothing): the
    /// checker's payload-prefix rules, also what a writer refuses before it
    /// writes a file the checker would call corrupt. The version is not among
    /// them: another version is another generation (`Generation`), never damage.
    public func defects(tokens: UInt32, ctxSize: UInt32, payloadBytes: UInt64) -> [String] {
        guard magic == PayloadPrefix.magicValue else {
            return ["payload magic is \(hex32(magic)), expected \(hex32(PayloadPrefix.magicValue)) (DSV4)"]
        }
        var out: [String] = []
        if tokenCount != tokens {
            out.append("payload holds \(tokenCount) tokens; the header says \(tokens)")
        }
        if savedContext != ctxSize {
            out.append("payload was saved for a context of \(savedContext); the header says \(ctxSize)")
        }
        if minimumPayloadBytes > payloadBytes {
            out.append("payload prefix claims at least \(minimumPayloadBytes) bytes (\(tokenCount) tokens, vocabulary \(vocabSize)); the payload is \(payloadBytes)")
        }
        return out
    }

    public func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.reserveCapacity(PayloadPrefix.size)
        for v in [magic, version, savedContext, prefillChunk, rawRingCapacity, rawWindow, compressedCapacity,
                  tokenCount, layerCount, headDim, indexerHeadDim, vocabSize, liveRawRows] {
            LE.append32(v, to: &b)
        }
        return b
    }

    /// The fewest payload bytes this prefix can describe: itself, the token ids
    /// and the logits. Per-layer tensors come after and are not sized here.
    public var minimumPayloadBytes: UInt64 {
        UInt64(PayloadPrefix.size) + 4 * UInt64(tokenCount) + 4 * UInt64(vocabSize)
    }
}
