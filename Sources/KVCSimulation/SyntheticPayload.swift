import KVCFormat

/// A DSV4-shaped payload of any size: a correct 13-field prefix (so the
/// checker's payload checks pass), token ids, logits, then deterministic
/// pseudo-random "tensor" bytes. Any byte can be produced from its offset
/// alone, so a multi-GiB payload streams without being held.
public struct SyntheticPayload: PayloadSource, Sendable {
    public static let vocabSize: UInt32 = 256

    public let byteCount: UInt64
    public let prefix: PayloadPrefix
    public let seed: UInt64
    private let prefixBytes: [UInt8]

    /// The most tokens a payload of `bytes` can describe with this vocabulary.
    public static func maxTokens(payloadBytes bytes: UInt64) -> UInt32 {
        let fixed = UInt64(PayloadPrefix.size) + 4 * UInt64(vocabSize)
        guard bytes >= fixed + 4 else { return 0 }
        return UInt32(min(UInt64(UInt32.max), (bytes - fixed) / 4))
    }

    public static var minimumBytes: UInt64 { UInt64(PayloadPrefix.size) + 4 * UInt64(vocabSize) + 4 }

    /// `version`: the DSV4 payload version to write (2 as ds4 from e8e8779, 1 before it).
    public init(byteCount: UInt64, tokens: UInt32, ctxSize: UInt32, seed: UInt64, version: UInt32 = PayloadPrefix.currentVersion) {
        precondition(tokens >= 1 && tokens <= SyntheticPayload.maxTokens(payloadBytes: byteCount),
                     "payload of \(byteCount) bytes cannot hold \(tokens) tokens")
        self.byteCount = byteCount
        self.seed = seed
        prefix = PayloadPrefix(version: version, savedContext: ctxSize, prefillChunk: 2048, rawRingCapacity: 4096, rawWindow: 4096,
                               compressedCapacity: ctxSize / 4, tokenCount: tokens, layerCount: 61, headDim: 512,
                               indexerHeadDim: 128, vocabSize: SyntheticPayload.vocabSize, liveRawRows: min(tokens, 4096))
        prefixBytes = prefix.encoded()
    }

    public func fill(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) {
        let tokensEnd = UInt64(PayloadPrefix.size) + 4 * UInt64(prefix.tokenCount)
        let logitsEnd = tokensEnd + 4 * UInt64(prefix.vocabSize)
        var i = 0
        var p = offset
        // Structured head, byte by byte (small).
        while i < buffer.count && p < logitsEnd {
            buffer[i] = headByte(p, tokensEnd: tokensEnd)
            i += 1
            p += 1
        }
        // Tensor bytes, eight at a time once aligned.
        while i < buffer.count && p % 8 != 0 {
            buffer[i] = tensorByte(p)
            i += 1
            p += 1
        }
        let base = buffer.baseAddress!
        while buffer.count - i >= 8 {
            let v = SplitMix64.mix(seed ^ (p >> 3)).littleEndian
            (base + i).storeBytes(of: v, as: UInt64.self)
            i += 8
            p += 8
        }
        while i < buffer.count {
            buffer[i] = tensorByte(p)
            i += 1
            p += 1
        }
    }

    @inline(__always)
    private func tensorByte(_ p: UInt64) -> UInt8 {
        UInt8(truncatingIfNeeded: SplitMix64.mix(seed ^ (p >> 3)) >> (8 * (p & 7)))
    }

    private func headByte(_ p: UInt64, tokensEnd: UInt64) -> UInt8 {
        if p < UInt64(PayloadPrefix.size) { return prefixBytes[Int(p)] }
        let field = (p - UInt64(PayloadPrefix.size)) / 4
        let shift = 8 * ((p - UInt64(PayloadPrefix.size)) % 4)
        let value: UInt32
        if p < tokensEnd {
            value = UInt32(truncatingIfNeeded: SplitMix64.mix(seed &+ field)) % prefix.vocabSize
        } else {
            let logit = Float(Int(field) - Int(prefix.tokenCount)) * -0.01
            value = logit.bitPattern
        }
        return UInt8(truncatingIfNeeded: value >> UInt32(shift))
    }
}
