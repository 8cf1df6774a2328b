import Foundation
import Testing
@testable import KVCFormat
import KVCSimulation

/// Loads into a caller's destination (what libkvcformat's kvc_load uses): a
/// buffer, with the CRC on a second core for large payloads, or a sink that
/// gets each chunk; refusals before or during the read.
@Suite struct LoaderDestinationTests {
    static func expected(_ payload: SyntheticPayload) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: Int(payload.byteCount))
        b.withUnsafeMutableBytes { payload.fill(offset: 0, into: $0) }
        return b
    }

    static func store(_ dir: String, bytes: UInt64, version: UInt8 = 2) throws -> (String, [UInt8]) {
        let payload = SyntheticPayload(byteCount: bytes, tokens: 100, ctxSize: 4096, seed: bytes)
        let p = try CheckpointWriter(version: version).store(
            in: dir, text: Array("destination \(bytes)".utf8), payload: payload,
            metadata: .init(reason: .cold, modelID: 1, quantBits: 4, ctxSize: 4096, tokens: 100, createdAt: 1),
            toolMap: Fixture.map)
        return (p, expected(payload))
    }

    /// Below and above StripedRead.minimumBytes: the same bytes, the same verdicts.
    @Test(arguments: [UInt64(3 << 20) + 5, UInt64(StripedRead.minimumBytes) * 2 + 12_345])
    func buffer_getsThePayload_andDamageAnywhereIsRefused(bytes: UInt64) throws {
        let d = TempDir()
        let (p, want) = try Self.store(d.path, bytes: bytes)
        var buf = [UInt8](repeating: 0, count: want.count)
        var trailer: UInt64 = 0
        let body = try buf.withUnsafeMutableBytes { dest in
            try CheckpointLoader().load(path: p) { h, t in
                #expect(h.payloadBytes == bytes)
                trailer = t
                return .buffer(dest)
            }
        }
        #expect(buf == want)
        #expect(body.checksums == .crc32c && body.toolMapBytes == Fixture.map.encoded() && trailer == UInt64(Fixture.map.encoded().count))
        // The first chunk, the middle, the last byte: each refused (each thread checks the pieces it read).
        let start = Int(Bytes.header(p).prologueSize) + Int(Bytes.header(p).textBytes)
        for offset in [start + 100, start + want.count / 2, start + want.count - 1] {
            Bytes.flip(p, at: offset)
            #expect { try buf.withUnsafeMutableBytes { dest in try CheckpointLoader().load(path: p) { _, _ in .buffer(dest) } } } throws: {
                ($0 as? KVCError)?.kind == .corrupt && "\($0)".contains("payload CRC mismatch")
            }
            Bytes.flip(p, at: offset)
        }
        _ = try buf.withUnsafeMutableBytes { dest in try CheckpointLoader().load(path: p) { _, _ in .buffer(dest) } }
    }

    /// The striped read directly: every piece in place and the CRC of the whole, whatever the
    /// piece size (an odd last piece included); a file that ends early is an error, not a short buffer.
    @Test func stripedRead_fillsEveryPiece_andFailsWhenTheFileEndsEarly() throws {
        let d = TempDir()
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<(9 << 20) + 777).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let path = d.path + "/striped"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        let file = try CheckpointFile.open(path, .readOnly)
        for piece in [1 << 20, 3 << 20, 4 << 20, 16 << 20] {
            var dest = [UInt8](repeating: 0, count: bytes.count - 100)
            let crc = try dest.withUnsafeMutableBytes { try StripedRead.read(fd: file.fd, path: path, from: 100, into: $0, piece: piece) }
            #expect(dest[...] == bytes[100...], "piece \(piece)")
            #expect(crc == CRC32C.checksum(bytes[100...]), "piece \(piece)")
        }
        var tooLong = [UInt8](repeating: 0, count: bytes.count)
        #expect { try tooLong.withUnsafeMutableBytes { try StripedRead.read(fd: file.fd, path: path, from: 100, into: $0, piece: 1 << 20) } } throws: {
            ($0 as? KVCError)?.kind == .io && "\($0)".contains("file ended")
        }
    }

    @Test func sink_getsEveryChunkInOrder_andItsFailureStopsTheLoad() throws {
        let d = TempDir()
        let (p, want) = try Self.store(d.path, bytes: 5 << 20 | 3)
        var got: [UInt8] = []
        let body = try CheckpointLoader().load(path: p) { _, _ in .sink { got += $0 } }
        #expect(got == want && body.checksums == .crc32c)
        struct Stop: Error {}
        var calls = 0
        #expect(throws: Stop.self) {
            try CheckpointLoader().load(path: p) { _, _ in .sink { _ in calls += 1; if calls == 2 { throw Stop() } } }
        }
        #expect(calls == 2)
        // Damage in the last chunk: chunks were handed over, and the load still fails at the end.
        Bytes.flip(p, at: Int(Bytes.header(p).bodyEnd!) - 1)
        var handed = 0
        #expect { try CheckpointLoader().load(path: p) { _, _ in .sink { handed += $0.count } } } throws: {
            ($0 as? KVCError)?.kind == .corrupt
        }
        #expect(handed == want.count)
    }

    @Test func destination_isAskedBeforeAnyRead_andMayDecline() throws {
        let d = TempDir()
        let (p, want) = try Self.store(d.path, bytes: 1 << 20)
        struct TooSmall: Error { var need: UInt64 }
        #expect { try CheckpointLoader().load(path: p) { h, _ in throw TooSmall(need: h.payloadBytes) } } throws: {
            ($0 as? TooSmall)?.need == UInt64(want.count)
        }
        // A buffer shorter than the payload is an argument error, not a crash.
        var small = [UInt8](repeating: 0, count: 10)
        #expect { try small.withUnsafeMutableBytes { b in try CheckpointLoader().load(path: p) { _, _ in .buffer(b) } } } throws: {
            ($0 as? KVCError)?.kind == .invalidArgument
        }
    }

    @Test func payloadPrefixDefects_areTheCheckersRules() {
        let good = PayloadPrefix(savedContext: 4096, prefillChunk: 2048, rawRingCapacity: 4096, rawWindow: 4096,
                                 compressedCapacity: 1024, tokenCount: 10, layerCount: 61, headDim: 512,
                                 indexerHeadDim: 128, vocabSize: 256, liveRawRows: 10)
        #expect(good.defects(tokens: 10, ctxSize: 4096, payloadBytes: 4096).isEmpty)
        #expect(good.defects(tokens: 11, ctxSize: 4096, payloadBytes: 4096) == ["payload holds 10 tokens; the header says 11"])
        #expect(good.defects(tokens: 10, ctxSize: 8192, payloadBytes: 4096) == ["payload was saved for a context of 4096; the header says 8192"])
        #expect(good.defects(tokens: 10, ctxSize: 4096, payloadBytes: 100).count == 1)
        var other = good
        other.version = 1
        #expect(other.defects(tokens: 10, ctxSize: 4096, payloadBytes: 4096).isEmpty, "a payload version is a generation, never a defect")
        var bad = good
        bad.magic = 0
        #expect(bad.defects(tokens: 11, ctxSize: 1, payloadBytes: 1).count == 1, "a wrong magic is the only thing said")
    }

    @Test func crc32cCombine_isTheCRCOfTheConcatenation() {
        var rng = SystemRandomNumberGenerator()
        let data = (0..<100_003).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let whole = CRC32C.checksum(data)
        for cut in [0, 1, 7, 4096, 50_000, 99_999, 100_003] {
            let a = CRC32C.checksum(data[0..<cut]), b = CRC32C.checksum(data[cut...])
            #expect(CRC32C.combine(a, b, lengthOfB: data.count - cut) == whole, "cut at \(cut)")
        }
        // Many pieces folded left to right, as a striped read does.
        var folded = CRC32C.checksum(data[0..<1000])
        var at = 1000
        while at < data.count {
            let end = min(at + 3333, data.count)
            folded = CRC32C.combine(folded, CRC32C.checksum(data[at..<end]), lengthOfB: end - at)
            at = end
        }
        #expect(folded == whole)
        #expect(CRC32C.ZerosOperator(bytes: 0).apply(0xDEAD_BEEF) == 0xDEAD_BEEF)
    }

    @Test func crc32c_continues_andTheDigestGivesItsBytes() {
        let a = Array("1234".utf8), b = Array("56789".utf8)
        var c = CRC32C(continuing: CRC32C.checksum(a))
        c.update(b)
        #expect(c.value == 0xE306_9283)
        var d = TextDigest()
        Array("abc".utf8).withUnsafeBytes { d.update($0) }
        #expect(d.bytes().map { String(format: "%02x", $0) }.joined() == "a9993e364706816aba3e25717850c26c9cd0d89d")
    }
}
