import Foundation
import Testing
@testable import KVCFormat
import KVCSimulation
import CReferenceScore

@Suite struct EvictionScoreTests {
    static let sha = String(repeating: "a", count: 40)

    static func entry(size: UInt64 = 1_000_000, tokens: UInt32 = 1000, hits: UInt32 = 0, lastUsed: UInt64 = 0,
                      createdAt: UInt64 = 0, reason: KVCReason = .continued, textBytes: UInt32 = 10,
                      modelID: UInt8 = 1, quantBits: UInt8 = 4, ctxSize: UInt32 = 4096, sha: String = sha,
                      unusable: String? = nil) -> CacheEntry {
        let h = KVCHeader(quantBits: quantBits, reason: reason, modelID: modelID, tokens: tokens, hits: hits,
                          ctxSize: ctxSize, createdAt: createdAt, lastUsed: lastUsed, payloadBytes: 0, textBytes: textBytes)
        return CacheEntry(sha: sha, header: h, fileSize: size, identity: FileIdentity(device: 0, inode: 0), unusable: unusable)
    }

    /// Values worked out by hand from the C formula.
    @Test func handComputedTable() {
        let now: UInt64 = 1_000_000
        let sixHours: UInt64 = 21600
        let cases: [(String, CacheEntry, Double)] = [
            ("never used, no timestamps: hits ignored", Self.entry(hits: 50), 1000.0 / 1_000_000),
            ("used now: full hits", Self.entry(hits: 3, lastUsed: now), 4 * 1000.0 / 1_000_000),
            ("one half-life ago: half the hits", Self.entry(hits: 8, lastUsed: now - sixHours), 5 * 1000.0 / 1_000_000),
            ("two half-lives, created_at stands in", Self.entry(hits: 8, createdAt: now - 2 * sixHours), 3 * 1000.0 / 1_000_000),
            ("used in the future: no decay", Self.entry(hits: 2, lastUsed: now + 50), 3 * 1000.0 / 1_000_000),
            ("decayed below 0.01 counts as 0", Self.entry(hits: 1, lastUsed: now - 7 * sixHours), 1000.0 / 1_000_000),
            ("just above 0.01 still counts", Self.entry(hits: 2, lastUsed: now - 7 * sixHours), (1 + 2.0 / 128) * 1000.0 / 1_000_000),
            ("cold anchor doubles", Self.entry(hits: 1, lastUsed: now, reason: .cold), 2 * 2 * 1000.0 / 1_000_000),
            ("evict anchor doubles", Self.entry(reason: .evict), 2 * 1000.0 / 1_000_000),
            ("shutdown anchor doubles", Self.entry(reason: .shutdown), 2 * 1000.0 / 1_000_000),
            ("agent-session is no anchor", Self.entry(reason: .agentSession), 1000.0 / 1_000_000),
            ("empty file scores 0", Self.entry(size: 0, hits: 9, lastUsed: now), 0),
            ("unusable file scores 0", Self.entry(hits: 9, lastUsed: now, unusable: "payload ABI 3"), 0),
        ]
        for (what, e, expected) in cases {
            #expect(EvictionScore.score(e, now: now) == expected, "\(what)")
        }
    }

    @Test func supersededContinued_isScaledByHitShare() {
        let text = Array("prefix text and the rest".utf8)
        let prefixSHA = TextDigest.sha1Hex(text[0..<11])
        let inc = IncomingCheckpoint(text: text, modelID: 1, quantBits: 4, ctxSize: 4096, rejectDifferentQuant: true)
        let never = Self.entry(textBytes: 11, sha: prefixSHA)
        #expect(EvictionScore.score(never, now: 10, incoming: inc) == 1000.0 / 1_000_000 * 0.05)
        let hit = Self.entry(hits: 1, lastUsed: 10, textBytes: 11, sha: prefixSHA)
        // eff = 1: score (1+1)*T/S, factor 0.05 + 0.45 * 1/2
        #expect(EvictionScore.score(hit, now: 10, incoming: inc) == 2 * 1000.0 / 1_000_000 * (0.05 + 0.45 * 0.5))
        // Not superseded: cold, other model, other quant (rejected), smaller context, not a prefix, equal length.
        let no: [CacheEntry] = [
            Self.entry(reason: .cold, textBytes: 11, sha: prefixSHA),
            Self.entry(textBytes: 11, modelID: 2, sha: prefixSHA),
            Self.entry(textBytes: 11, quantBits: 2, sha: prefixSHA),
            Self.entry(textBytes: 11, ctxSize: 2048, sha: prefixSHA),
            Self.entry(textBytes: 11, sha: String(repeating: "b", count: 40)),
            Self.entry(textBytes: UInt32(text.count), sha: TextDigest.sha1Hex(text)),
        ]
        for e in no { #expect(EvictionScore.breakdown(e, now: 10, incoming: inc).supersededFactor == nil) }
        // Quant differences are fine when the engine accepts cross-quant reuse.
        var accept = inc
        accept.rejectDifferentQuant = false
        #expect(EvictionScore.breakdown(Self.entry(textBytes: 11, quantBits: 2, sha: prefixSHA), now: 10, incoming: accept).supersededFactor == 0.05)
    }

    /// The engine's own C function, compiled from its source, against ours on
    /// random entries: equal to the last bit.
    @Test func parityWithTheEngineCFunction_onRandomEntries() {
        var rng = SplitMix64(seed: 2024)
        let text = Array("a shared conversation prefix that continues further".utf8)
        for i in 0..<20_000 {
            let now = UInt64(1_700_000_000) + rng.next() % 1_000_000
            let textBytes = UInt32(rng.next() % UInt64(text.count + 2))
            let isPrefix = rng.next() % 2 == 0 && Int(textBytes) <= text.count
            let sha = isPrefix ? TextDigest.sha1Hex(text[0..<Int(textBytes)]) : String(format: "%040x", i)
            let timeMode = rng.next() % 4
            let e = Self.entry(
                size: rng.next() % 5 == 0 ? 0 : rng.next() % (1 << 34) + 1,
                tokens: UInt32(truncatingIfNeeded: rng.next() % 200_000),
                hits: UInt32(truncatingIfNeeded: rng.next() % (rng.next() % 2 == 0 ? 10 : 100_000)),
                lastUsed: timeMode == 0 ? 0 : now &- rng.next() % 500_000 &+ 1000,
                createdAt: timeMode == 3 ? 0 : now - rng.next() % 900_000,
                reason: KVCReason(code: UInt8(rng.next() % 8)), textBytes: textBytes,
                modelID: UInt8(rng.next() % 2), quantBits: rng.next() % 2 == 0 ? 2 : 4,
                ctxSize: UInt32(rng.next() % 3) * 4096, sha: sha)
            let inc = IncomingCheckpoint(text: text, modelID: UInt8(rng.next() % 2), quantBits: 4,
                                         ctxSize: UInt32(rng.next() % 3) * 4096, rejectDifferentQuant: rng.next() % 2 == 0)
            let withIncoming = rng.next() % 2 == 0
            let ours = EvictionScore.score(e, now: now, incoming: withIncoming ? inc : nil)
            let theirs = cScore(e, now: now, incoming: withIncoming ? inc : nil)
            #expect(ours.bitPattern == theirs.bitPattern, "case \(i): ours \(ours), engine \(theirs)")
            if ours.bitPattern != theirs.bitPattern { return }
        }
    }

    func cScore(_ e: CacheEntry, now: UInt64, incoming: IncomingCheckpoint?) -> Double {
        let h = e.header!
        var r = ref_entry()
        withUnsafeMutableBytes(of: &r.sha) { buf in
            for (i, c) in e.sha.utf8.enumerated() { buf[i] = c }
            buf[40] = 0
        }
        r.quant_bits = h.quantBits
        r.reason = h.reasonCode <= 6 ? h.reasonCode : 0
        r.model_id = h.modelID
        r.tokens = h.tokens
        r.hits = h.hits
        r.ctx_size = h.ctxSize
        r.text_bytes = h.textBytes
        r.created_at = h.createdAt
        r.last_used = h.lastUsed
        r.file_size = e.fileSize
        guard let incoming else { return ref_eviction_score(&r, now, nil, nil) }
        let prefix = Int(h.textBytes) <= incoming.text.count ? TextDigest.sha1Hex(incoming.text[0..<Int(h.textBytes)]) : ""
        return incoming.text.withUnsafeBufferPointer { tb in
            tb.withMemoryRebound(to: CChar.self) { t in
                var inc = ref_incoming(text: t.baseAddress, text_len: t.count, model_id: incoming.modelID,
                                       quant_bits: incoming.quantBits, ctx_size: incoming.ctxSize,
                                       reject_different_quant: incoming.rejectDifferentQuant)
                return ref_eviction_score(&r, now, &inc, prefix)
            }
        }
    }

    @Test func victimOrder_lowestScoreFirst_thenOlderLastUsed_thenName() {
        let now: UInt64 = 100_000
        let a = Self.entry(tokens: 10, lastUsed: 50, sha: String(repeating: "c", count: 40))
        let b = Self.entry(tokens: 10, lastUsed: 40, sha: String(repeating: "d", count: 40))
        let c = Self.entry(tokens: 10, lastUsed: 40, sha: String(repeating: "b", count: 40))
        let high = Self.entry(tokens: 9000, lastUsed: 1, sha: String(repeating: "e", count: 40))
        let bad = Self.entry(tokens: 9000, lastUsed: 99_999, sha: String(repeating: "f", count: 40), unusable: "version 3")
        let order = EvictionPlan.order(entries: [high, a, b, c, bad], now: now).map { $0.entry.sha.first! }
        #expect(order == ["f", "b", "d", "c", "e"])
    }

    @Test func plan_takesVictimsUntilUnderBudget_andHonoursExtraBytes() {
        let entries = (0..<10).map { i in
            Self.entry(size: 100, tokens: UInt32(i + 1), lastUsed: 1, sha: String(format: "%040d", i))
        }
        let plan = EvictionPlan.make(entries: entries, budgetBytes: 650, now: 10)
        #expect(plan.victims.map { $0.entry.sha } == (0..<4).map { String(format: "%040d", $0) })
        #expect(plan.remainingBytes == 600)
        let room = EvictionPlan.make(entries: entries, budgetBytes: 650, extraBytes: 200, now: 10)
        #expect(room.remainingBytes == 400)
        #expect(EvictionPlan.make(entries: entries, budgetBytes: 5000, now: 10).victims.isEmpty)
        // As in ds4: no budget, or more extra than budget, evicts nothing.
        #expect(EvictionPlan.make(entries: entries, budgetBytes: 0, now: 10).victims.isEmpty)
        #expect(EvictionPlan.make(entries: entries, budgetBytes: 100, extraBytes: 200, now: 10).victims.isEmpty)
    }
}
