import Foundation
import Testing
@testable import KVCFormat
import KVCSimulation

@Suite struct LoaderTests {
    @Test(arguments: [UInt8(1), 2])
    func store_thenLoad_returnsTheExactTextPayloadAndToolMap(version: UInt8) throws {
        let d = TempDir()
        let payload = SyntheticPayload(byteCount: 3 << 20 | 77, tokens: 100, ctxSize: 4096, seed: 11)
        var expected = [UInt8](repeating: 0, count: Int(payload.byteCount))
        expected.withUnsafeMutableBytes { payload.fill(offset: 0, into: $0) }
        let text = Array("load me".utf8)
        let p = try CheckpointWriter(version: version).store(
            in: d.path, text: text, payload: payload,
            metadata: .init(reason: .continued, modelID: 2, quantBits: 2, ctxSize: 4096, tokens: 100, createdAt: 9),
            toolMap: Fixture.map)
        let l = try CheckpointLoader().load(path: p)
        #expect(l.text == text)
        #expect(l.payload == expected)
        #expect(l.toolMap == Fixture.map)
        #expect(l.checksums == (version == 2 ? .crc32c : .none))
        #expect(l.header.reason == .continued && l.header.modelID == 2)
        // No temporary file is left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: d.path) == [p.split(separator: "/").last.map(String.init)!])
    }

    @Test func syntheticPayload_fillsTheSameBytes_whateverTheChunking() {
        let payload = SyntheticPayload(byteCount: 10_000, tokens: 10, ctxSize: 4096, seed: 5)
        var whole = [UInt8](repeating: 0, count: 10_000)
        whole.withUnsafeMutableBytes { payload.fill(offset: 0, into: $0) }
        var pieces = [UInt8](repeating: 0, count: 10_000)
        var off = 0
        for n in [1, 3, 51, 52, 1000, 7, 8886] {
            pieces.withUnsafeMutableBytes { payload.fill(offset: UInt64(off), into: UnsafeMutableRawBufferPointer(rebasing: $0[off..<off + n])) }
            off += n
        }
        #expect(off == 10_000)
        #expect(pieces == whole)
    }

    @Test func corruptV2_isRefusedWholeBeforeAnyPayloadIsHandedOver() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 2, payloadBytes: 1 << 20)
        Bytes.flip(p, at: Int(Bytes.header(p).bodyEnd!) - 5)
        #expect { try CheckpointLoader().load(path: p) } throws: { e in
            guard let e = e as? KVCError else { return false }
            return e.kind == .corrupt && e.detail.contains("payload CRC mismatch")
        }
        // Without verification the same bytes come back (what today's engine does).
        #expect(try CheckpointLoader().load(path: p, verify: false).payload.count == 1 << 20)
    }

    @Test func v1File_stillLoads() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 1)
        #expect(try CheckpointLoader().load(path: p).checksums == .none)
    }

    @Test func findTextPrefix_picksTheLongestCompatiblePrefix() throws {
        let d = TempDir()
        let base = "<|System|>sys prompt "
        try Fixture.store(in: d.path, text: base)
        let longer = try Fixture.store(in: d.path, text: base + "<|User|>q1<|Assistant|>a1 ", reason: .continued)
        try Fixture.store(in: d.path, text: base + "<|User|>other", reason: .continued)
        // Longest of all, but for another model: not restorable.
        try Fixture.store(in: d.path, text: base + "<|User|>q1<|Assistant|>a1 <|User|>q2", modelID: 9)
        let prompt = Array((base + "<|User|>q1<|Assistant|>a1 <|User|>q2 and more").utf8)
        let c = CheckpointLoader.Compatibility(modelID: 1, quantBits: 4, ctxSize: 4096)
        let hit = try CheckpointLoader().findTextPrefix(in: d.path, prompt: prompt, compatibility: c)
        #expect(hit.map { d.file($0.fileName) } == longer)
        let miss = try CheckpointLoader().findTextPrefix(in: d.path, prompt: Array("unrelated".utf8), compatibility: c)
        #expect(miss == nil)
        // A larger stored context than ours cannot be restored.
        let small = CheckpointLoader.Compatibility(modelID: 1, quantBits: 4, ctxSize: 1024)
        #expect(try CheckpointLoader().findTextPrefix(in: d.path, prompt: prompt, compatibility: small) == nil)
    }
}
