import CReferenceKVC
import Foundation
import Testing
@testable import KVCFormat
import KVCSimulation

/// The Swift format module against an independent C reference written from
/// kvc-format.md (Tests/CReferenceKVC: the layout and CRCs, unchanged in revision 3), on many generated files,
/// both ways: what the C side stores, touches and rewrites, our verifier
/// calls ok; what our writer, touch and tool-map rewrite produce, the C side
/// accepts; and damage in every region is refused by both.
@Suite struct CReferenceCrossTests {
    struct Generated {
        var fields: ref_kvc_fields
        var text: [UInt8]
        var payload: [UInt8]
        var map: ToolMap?
        var name: String { TextDigest.sha1Hex(text) + ".kv" }
    }

    static func generate(_ rng: inout SplitMix64, version: UInt8) -> Generated {
        let textLen = Int(rng.next() % 400) + 1
        let text = (0..<textLen).map { _ in UInt8(32 + rng.next() % 95) }
        let payloadBytes = SyntheticPayload.minimumBytes + rng.next() % 20_000
        let tokens = UInt32(1 + rng.next() % UInt64(SyntheticPayload.maxTokens(payloadBytes: payloadBytes)))
        let ctx = UInt32(1024 + rng.next() % 65536)
        var payload = [UInt8](repeating: 0, count: Int(payloadBytes))
        let pr146 = rng.next() % 2 == 0
        payload.withUnsafeMutableBytes {
            SyntheticPayload(byteCount: payloadBytes, tokens: tokens, ctxSize: ctx, seed: rng.next(),
                             version: pr146 ? 1 : 2).fill(offset: 0, into: $0)
        }
        let map: ToolMap? = rng.next() % 3 == 0 ? nil : ToolMap((0..<Int(rng.next() % 4)).map { i in
            ToolMap.Entry(id: "call_\(rng.next() % 1000)", dsml: String(repeating: "d", count: Int(rng.next() % 200)) + "\(i)")
        })
        let fields = ref_kvc_fields(
            version: version, quant_bits: rng.next() % 2 == 0 ? 2 : 4, reason: UInt8(rng.next() % 7),
            ext_flags: UInt8(rng.next() % 4) << 1, model_id: pr146 ? 0 : UInt8(1 + rng.next() % 5),
            payload_abi: pr146 ? 0 : 2, tokens: tokens, hits: UInt32(rng.next() % 100), ctx_size: ctx,
            created_at: 1_700_000_000 + rng.next() % 1_000_000, last_used: 1_700_000_000 + rng.next() % 2_000_000)
        return Generated(fields: fields, text: text, payload: payload, map: map)
    }

    /// A verifier for the engine that writes `path`'s generation (read from the file), so every rule applies.
    func verifier(for path: String) -> Verifier {
        let e = try? CacheEntry.read(path: path)
        return Verifier(engine: e?.header.map { h in
            Generation(fileVersion: 2, payloadABI: h.payloadABI, payloadVersion: Generation.knownPayloadVersion(abi: h.payloadABI))
        })
    }

    func cStore(_ g: Generated, in dir: String) -> String {
        let trailer = g.map?.encoded() ?? []
        let rc = ref_kvc_store(dir, g.name, [g.fields], g.text, UInt32(g.text.count), g.payload, UInt64(g.payload.count),
                               trailer, UInt64(trailer.count))
        #expect(rc == 0)
        return dir + "/" + g.name
    }

    func swiftStore(_ g: Generated, in dir: String) throws -> String {
        let f = g.fields
        var m = CheckpointWriter.Metadata(reason: KVCReason(code: f.reason), modelID: f.model_id, quantBits: f.quant_bits,
                                          ctxSize: f.ctx_size, tokens: f.tokens, createdAt: f.created_at, lastUsed: f.last_used)
        m.hits = f.hits
        m.keyFlags = f.ext_flags
        m.payloadABI = f.payload_abi
        return try CheckpointWriter(version: f.version).store(in: dir, text: g.text, payload: BytesPayload(g.payload),
                                                              metadata: m, toolMap: g.map)
    }

    func cCheck(_ path: String) -> (Int32, String) {
        var why = [CChar](repeating: 0, count: 256)
        let rc = ref_kvc_check(path, &why, why.count)
        return (rc, String(decoding: why.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    @Test(arguments: [UInt8(1), 2])
    func whatTheCReferenceWrites_ourVerifierCallsOk_andOurWriterMatchesByteForByte(version: UInt8) throws {
        var rng = SplitMix64(seed: 146 + UInt64(version))
        for _ in 0..<150 {
            let g = Self.generate(&rng, version: version)
            let cDir = TempDir(), sDir = TempDir()
            let cPath = cStore(g, in: cDir.path)
            let r = try verifier(for: cPath).verify(path: cPath)
            #expect(r.verdict == .ok, "\(r.problems)")
            let sPath = try swiftStore(g, in: sDir.path)
            #expect(Bytes.read(sPath) == Bytes.read(cPath), "the same checkpoint must be the same bytes")
            #expect(cCheck(sPath).0 == 0, "\(cCheck(sPath).1)")
        }
    }

    @Test(arguments: [UInt8(1), 2])
    func updates_eachSideAcceptsTheOthers(version: UInt8) throws {
        var rng = SplitMix64(seed: 4600 + UInt64(version))
        for i in 0..<100 {
            let g = Self.generate(&rng, version: version)
            let dir = TempDir()
            let path = try swiftStore(g, in: dir.path)
            // Ours, checked by C.
            try CheckpointUpdater().touch(path: path, now: 1_800_000_000 + UInt64(i))
            #expect(cCheck(path).0 == 0, "after our touch: \(cCheck(path).1)")
            let map = i % 4 == 0 ? ToolMap([]) : ToolMap([ToolMap.Entry(id: "c\(i)", dsml: String(repeating: "x", count: i))])
            try CheckpointUpdater().rewriteToolMap(path: path, toolMap: map, now: 1_800_000_100)
            #expect(cCheck(path).0 == 0, "after our tool-map rewrite: \(cCheck(path).1)")
            // C's, checked by ours.
            #expect(ref_kvc_touch(path, UInt32(i), 1_900_000_000) == 0)
            var r = try verifier(for: path).verify(path: path)
            #expect(r.verdict == .ok, "after C's touch: \(r.problems)")
            #expect(r.header?.hits == UInt32(i) && r.header?.lastUsed == 1_900_000_000)
            let cMap = i % 3 == 0 ? [] : ToolMap([ToolMap.Entry(id: "k\(i)", dsml: "dsml")]).encoded()
            #expect(ref_kvc_rewrite_toolmap(path, cMap, UInt64(cMap.count), 1_900_000_001) == 0)
            r = try verifier(for: path).verify(path: path)
            #expect(r.verdict == .ok, "after C's tool-map rewrite: \(r.problems)")
            #expect(r.header?.hasToolMap == !cMap.isEmpty)
        }
    }

    @Test func damageInEveryRegion_isRefusedByBoth() throws {
        var rng = SplitMix64(seed: 77)
        var cases = 0
        for _ in 0..<40 {
            var g = Self.generate(&rng, version: 2)
            if g.map == nil || g.map!.entries.isEmpty { g.map = ToolMap([ToolMap.Entry(id: "id", dsml: "dsml")]) }
            let dir = TempDir()
            let path = try swiftStore(g, in: dir.path)
            let pristine = Bytes.read(path)
            let h = Bytes.header(path)
            let judge = verifier(for: path)
            let textAt = 68, payloadAt = 68 + Int(h.textBytes), trailerAt = payloadAt + Int(h.payloadBytes)
            let spots: [(String, Int)] = [
                ("header", Int(rng.next() % 68)), ("text", textAt + Int(rng.next() % UInt64(h.textBytes))),
                ("payload", payloadAt + Int(rng.next() % h.payloadBytes)),
                ("trailer", trailerAt + Int(rng.next() % UInt64(pristine.count - trailerAt))),
            ]
            for (region, at) in spots {
                var b = pristine
                b[at] ^= UInt8(1 + rng.next() % 255)
                Bytes.write(b, to: path)
                let ours = try judge.verify(path: path)
                // A v2 header whose CRC fails and whose byte 20 is not 0 could be another engine's layout
                // (revision 3): kept as incompatible, never judged; anything else is proven damage.
                let foreign = region == "header" && b[20] != 0
                #expect(ours.verdict == (foreign ? .incompatible : .corrupt), "\(region) byte \(at): ours said \(ours.verdict)")
                #expect(cCheck(path).0 == 1, "\(region) byte \(at): the C reference accepted it")
                cases += 1
            }
            // Cut short, in both versions' terms.
            Bytes.write(Array(pristine[0..<(payloadAt + Int(h.payloadBytes) / 2)]), to: path)
            #expect(try judge.verify(path: path).verdict == .corrupt)
            #expect(cCheck(path).0 == 1)
        }
        #expect(cases == 160)
    }
}

