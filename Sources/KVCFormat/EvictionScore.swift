#if canImport(Glibc)
import Glibc
#endif

/// The engine's eviction score, `ds4_kvstore_entry_eviction_score`, to the bit.
///
/// Why this shape (from ds4_kvstore.c): a checkpoint is worth its tokens per
/// byte of disk, weighted by how often it was reused. Hits decay with a 6-hour
/// half-life, because a hit is evidence of usefulness only while the workload
/// still resembles the one that produced it; below 0.01 decayed hits count as
/// none. Cold, evict and shutdown checkpoints are intentional anchors and get
/// a 2x prior so they outlive comparable continued waypoints. A continued
/// checkpoint whose text is a strict prefix of a newly arriving one is a
/// waypoint on the same path, now dominated: its score drops to 5% plus up to
/// 45% more for recent hits.
///
/// Parity matters because the engine evicts by the same rule when it is over
/// its own budget; two different orders would fight. So every operation below
/// is the C one in the C order (the products are not reassociated), and the
/// tests compare against the C function compiled from its source.
public enum EvictionScore {
    public static let hitHalfLifeSeconds: Double = 21600
    public static let minEffectiveHits = 0.01
    public static let anchorFactor = 2.0
    public static let continuedPrefixMinFactor = 0.05
    public static let continuedPrefixHitFactor = 0.45

    /// Every part of one score, for `kvscrubd entries` and `explain`.
    public struct Breakdown: Sendable, Equatable, Codable {
        public var score: Double
        public var hits: UInt32
        public var effectiveHits: Double
        /// Seconds since last use (or creation when never used); nil when neither is known.
        public var idleSeconds: UInt64?
        public var tokensPerByte: Double
        public var anchorFactor: Double
        /// The supersede multiplier when an incoming checkpoint dominates this one, else nil.
        public var supersededFactor: Double?
        /// Set when the file scores 0 because the engine cannot use it.
        public var unusable: String?
    }

    public static func score(_ e: CacheEntry, now: UInt64, incoming: IncomingCheckpoint? = nil) -> Double {
        breakdown(e, now: now, incoming: incoming).score
    }

    public static func breakdown(_ e: CacheEntry, now: UInt64, incoming: IncomingCheckpoint? = nil) -> Breakdown {
        guard let h = e.header, e.unusable == nil else {
            return Breakdown(score: 0, hits: e.header?.hits ?? 0, effectiveHits: 0, idleSeconds: nil, tokensPerByte: 0,
                             anchorFactor: 1, supersededFactor: nil, unusable: e.unusable ?? "no header")
        }
        if e.fileSize == 0 {
            return Breakdown(score: 0, hits: h.hits, effectiveHits: 0, idleSeconds: nil, tokensPerByte: 0,
                             anchorFactor: 1, supersededFactor: nil, unusable: nil)
        }
        var effectiveHits = Double(h.hits)
        let usedAt = h.lastUsed != 0 ? h.lastUsed : h.createdAt
        var idle: UInt64? = nil
        if usedAt == 0 {
            effectiveHits = 0
        } else {
            idle = now > usedAt ? now - usedAt : 0
            if now > usedAt {
                let elapsed = Double(now - usedAt)
                effectiveHits *= exp2(-elapsed / hitHalfLifeSeconds)
                if effectiveHits < minEffectiveHits { effectiveHits = 0 }
            }
        }
        var score = (effectiveHits + 1.0) * Double(h.tokens) / Double(e.fileSize)
        let anchor = h.reason.isAnchor ? anchorFactor : 1.0
        if h.reason.isAnchor { score *= anchorFactor }
        var superseded: Double? = nil
        if let incoming, incoming.supersedes(e) {
            let hh = effectiveHits > 0.0 ? effectiveHits / (effectiveHits + 1.0) : 0.0
            let f = continuedPrefixMinFactor + continuedPrefixHitFactor * hh
            score *= f
            superseded = f
        }
        return Breakdown(score: score, hits: h.hits, effectiveHits: effectiveHits, idleSeconds: idle,
                         tokensPerByte: Double(h.tokens) / Double(e.fileSize), anchorFactor: anchor,
                         supersededFactor: superseded, unusable: nil)
    }
}

/// A checkpoint about to be stored, against which continued waypoints are
/// judged (`ds4_kvstore_eviction_context`).
public struct IncomingCheckpoint: Sendable {
    public var text: [UInt8]
    public var modelID: UInt8
    public var quantBits: UInt8
    public var ctxSize: UInt32
    /// The engine's `--kv-cache-reject-different-quant`.
    public var rejectDifferentQuant: Bool

    public init(text: [UInt8], modelID: UInt8, quantBits: UInt8, ctxSize: UInt32, rejectDifferentQuant: Bool) {
        self.text = text
        self.modelID = modelID
        self.quantBits = quantBits
        self.ctxSize = ctxSize
        self.rejectDifferentQuant = rejectDifferentQuant
    }

    /// `kv_cache_incoming_supersedes_continued`: the entry is a continued
    /// checkpoint whose text is a strict prefix of ours, for the same model,
    /// the same quantization when that matters, and a context no smaller than
    /// ours (a smaller-context checkpoint can be loaded by a larger context,
    /// not the reverse).
    public func supersedes(_ e: CacheEntry) -> Bool {
        guard let h = e.header, h.reason == .continued else { return false }
        guard h.textBytes != 0, Int(h.textBytes) < text.count else { return false }
        guard h.modelID == modelID else { return false }
        if rejectDifferentQuant && h.quantBits != quantBits { return false }
        if ctxSize > h.ctxSize { return false }
        return TextDigest.sha1Hex(text[0..<Int(h.textBytes)]) == e.sha
    }
}
