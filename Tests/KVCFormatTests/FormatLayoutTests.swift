import Foundation
import Testing
@testable import KVCFormat
import KVCSimulation

/// The on-disk bytes, pinned: golden files in the repo, written once by the
/// writer with fixed inputs, must be reproduced exactly and must verify.
@Suite struct FormatLayoutTests {
    static let goldenText = Array("The golden checkpoint text.\n".utf8)

    func golden(_ version: Int) -> [UInt8] {
        let url = Bundle.module.url(forResource: "Golden/golden-v\(version)", withExtension: "kv")!
        return Array(try! Data(contentsOf: url))
    }

    /// v1 as ds4 from e8e8779 writes it (model 1, ABI 2, payload version 2); v2 as PR #146's engine
    /// does (bytes 7 and 20 zero, payload version 1).
    func writeGoldenInputs(version: UInt8, into dir: String) throws -> String {
        var meta = CheckpointWriter.Metadata(reason: .cold, modelID: version == 2 ? 0 : 1, quantBits: 4, ctxSize: 4096, tokens: 3,
                                             createdAt: 1_700_000_000, lastUsed: 1_700_000_100)
        meta.hits = 5
        meta.payloadABI = version == 2 ? 0 : 2
        return try CheckpointWriter(version: version).store(
            in: dir, text: FormatLayoutTests.goldenText,
            payload: SyntheticPayload(byteCount: 1200, tokens: 3, ctxSize: 4096, seed: 7, version: version == 2 ? 1 : 2),
            metadata: meta, toolMap: ToolMap([ToolMap.Entry(id: "call_7_0", dsml: "<|DSML|invoke name=\"t0\"></|DSML|invoke>")]))
    }

    @Test(arguments: [1, 2])
    func writer_reproducesGoldenFile_byteForByte(version: Int) throws {
        let dir = TempDir()
        let path = try writeGoldenInputs(version: UInt8(version), into: dir.path)
        if ProcessInfo.processInfo.environment["KVC_UPDATE_GOLDEN"] == "1" {
            // Regenerating is a deliberate act: the layout tests below check the new bytes field by field.
            let dest = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden/golden-v\(version).kv")
            try Data(Bytes.read(path)).write(to: dest)
        }
        #expect(Bytes.read(path) == golden(version))
        #expect(path.hasSuffix("/" + TextDigest.sha1Hex(FormatLayoutTests.goldenText) + ".kv"))
    }

    @Test func goldenV1_fieldsSitWhereTheEngineWritesThem() {
        let b = golden(1)
        #expect(Array(b[0..<3]) == Array("KVC".utf8))
        #expect(b[3] == 1 && b[4] == 4 && b[5] == 1 && b[6] == 1 && b[7] == 1)
        #expect(Array(b[8..<12]) == [3, 0, 0, 0])           // tokens
        #expect(Array(b[12..<16]) == [5, 0, 0, 0])          // hits
        #expect(Array(b[16..<20]) == [0, 0x10, 0, 0])       // ctx_size 4096
        #expect(b[20] == 2 && Array(b[21..<24]) == [0, 0, 0]) // payload ABI, reserved
        #expect(Array(b[24..<32]) == [0x00, 0xF1, 0x53, 0x65, 0, 0, 0, 0]) // 1700000000
        #expect(Array(b[32..<40]) == [0x64, 0xF1, 0x53, 0x65, 0, 0, 0, 0]) // 1700000100
        #expect(Array(b[40..<48]) == [0xB0, 0x04, 0, 0, 0, 0, 0, 0])       // payload 1200
        #expect(Array(b[48..<52]) == [28, 0, 0, 0])                        // text bytes
        #expect(Array(b[52..<80]) == FormatLayoutTests.goldenText)          // text at 52 in v1
        #expect(Array(b[80..<84]) == [0x44, 0x53, 0x56, 0x34])             // DSV4 payload magic
        #expect(Array(b[84..<88]) == [2, 0, 0, 0])                         // payload version 2 (e8e8779)
        #expect(Array(b[1280..<1284]) == Array("KTM".utf8) + [1])           // trailer after payload
        #expect(b.count == 52 + 28 + 1200 + 8 + 8 + 8 + 39)
    }

    /// PR #146's layout (kvc-format.md revision 2): header_crc at 48, text_crc 52, payload_crc 56,
    /// toolmap_crc 60, text_bytes 64, text at 68; the header CRC covers bytes 0..63 with its own
    /// field zeroed, continued over text_bytes. Checked with a bit-at-a-time CRC, not our own.
    @Test func goldenV2_isThePR146Layout_andItsCRCsCoverWhatTheSpecSays() {
        let b = golden(2)
        let le = { (o: Int) in UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24 }
        #expect(b[3] == 2 && b[7] == 0 && b[20] == 0)                      // version 2, model_id 0, payload ABI 0
        #expect(le(64) == 28)                                               // text_bytes at 64
        #expect(Array(b[68..<96]) == FormatLayoutTests.goldenText)          // text at 68
        #expect(le(52) == bitwiseCRC32C(Array(b[68..<96])))                 // text CRC
        #expect(le(56) == bitwiseCRC32C(Array(b[96..<1296])))               // payload CRC
        #expect(le(60) == bitwiseCRC32C(Array(b[1296...])))                 // tool-map CRC: to end of file
        var covered = Array(b[0..<68])
        covered.replaceSubrange(48..<52, with: [0, 0, 0, 0])
        #expect(le(48) == bitwiseCRC32C(covered))                           // header CRC at 48
        // The fields the engine shares with v1 sit where v1 has them.
        let v1 = golden(1)
        // The payloads differ only in the payload version: PR #146 writes 1, e8e8779 2.
        var v1Rest = Array(v1[52...]), v2Rest = Array(b[68...])
        #expect(v2Rest[32..<36] == [1, 0, 0, 0] && v1Rest[32..<36] == [2, 0, 0, 0])
        v1Rest.replaceSubrange(32..<36, with: [0, 0, 0, 0]); v2Rest.replaceSubrange(32..<36, with: [0, 0, 0, 0])
        #expect(v2Rest == v1Rest)
        #expect(Array(b[8..<20]) == Array(v1[8..<20]) && Array(b[24..<48]) == Array(v1[24..<48]))
        #expect(Array(b[64..<68]) == Array(v1[48..<52]))
    }

    @Test(arguments: [1, 2])
    func goldenFiles_verifyOk(version: Int) throws {
        let dir = TempDir()
        let path = dir.file(TextDigest.sha1Hex(FormatLayoutTests.goldenText) + ".kv")
        Bytes.write(golden(version), to: path)
        let r = try Verifier(engine: version == 2 ? .pr146 : .ds4e8e8779).verify(path: path)
        #expect(r.verdict == .ok, "\(r.problems)")
        #expect(r.checksums == (version == 2 ? .crc32c : .none))
        #expect(r.problems.isEmpty)
    }

    @Test func header_roundTripsThroughEncodeAndProbe_forRandomFields() {
        var rng = SplitMix64(seed: 99)
        for _ in 0..<500 {
            var h = KVCHeader(version: UInt8(rng.next() % 2 + 1), quantBits: UInt8(truncatingIfNeeded: rng.next()),
                              reason: .cold, extFlags: UInt8(truncatingIfNeeded: rng.next()),
                              modelID: UInt8(truncatingIfNeeded: rng.next()),
                              tokens: UInt32(truncatingIfNeeded: rng.next()), hits: UInt32(truncatingIfNeeded: rng.next()),
                              ctxSize: UInt32(truncatingIfNeeded: rng.next()), payloadABI: UInt8(truncatingIfNeeded: rng.next()),
                              createdAt: rng.next(), lastUsed: rng.next(), payloadBytes: rng.next(),
                              textBytes: UInt32(truncatingIfNeeded: rng.next()))
            h.reasonCode = UInt8(truncatingIfNeeded: rng.next())
            h.reserved = UInt32(truncatingIfNeeded: rng.next()) & 0xFF_FFFF
            if h.version == 2 {
                h.textCRC = UInt32(truncatingIfNeeded: rng.next())
                h.payloadCRC = UInt32(truncatingIfNeeded: rng.next())
                h.trailerCRC = UInt32(truncatingIfNeeded: rng.next())
                h = h.sealed()
            }
            let enc = h.encoded()
            #expect(enc.count == (h.version == 2 ? 68 : 52))
            #expect(KVCHeader.probe(enc) == .header(h))
        }
    }

    @Test func reasonAbove6_readsAsUnknown_likeTheEngine() {
        var h = KVCHeader(quantBits: 4, reason: .cold, modelID: 1, tokens: 1, ctxSize: 1, createdAt: 0, lastUsed: 0,
                          payloadBytes: 0, textBytes: 0)
        h.reasonCode = 9
        #expect(h.reason == .unknown)
        #expect(KVCReason(code: 6) == .agentSession)
    }

    @Test func toolMap_encodesAndDecodes() {
        let enc = Fixture.map.encoded()
        #expect(Array(enc[0..<4]) == Array("KTM".utf8) + [1])
        #expect(ToolMap.decode(enc) == Fixture.map)
        #expect(ToolMap.decode(enc + [0]) == nil)          // must end exactly at end of file
        #expect(ToolMap.decode(Array(enc.dropLast())) == nil)
    }

    @Test func checkpointNames_followTheEngine() {
        let sha = String(repeating: "ab", count: 20)
        #expect(CheckpointName.sha(of: sha + ".kv") == sha)
        #expect(CheckpointName.sha(of: sha.uppercased() + ".kv") == sha)
        #expect(CheckpointName.sha(of: sha + ".kv.tmp.123") == nil)
        #expect(CheckpointName.isTemporary(sha + ".kv.tmp.123"))
        #expect(CheckpointName.isTemporary("sysprompt.kv.tmp.Ab3xYz") && CheckpointName.isTemporary(sha.uppercased() + ".kv.tmp.Q"))
        #expect(!CheckpointName.isTemporary(sha + ".kv.tmp.") && !CheckpointName.isTemporary(sha + ".kv") && !CheckpointName.isTemporary(".kv.tmp.1"))
        #expect(!CheckpointName.isTemporary("notes.kv.tmp.1") && !CheckpointName.isTemporary(sha + "x.kv.tmp.1"))
        #expect(CheckpointName.sha(of: "x" + sha.dropFirst() + ".kv") == nil)
        #expect(CheckpointName.sha(of: sha + ".kvx") == nil)
    }

    @Test func takenAwayNames_neverLookLikeCheckpoints_andCarryTheOriginal() {
        let name = String(repeating: "AB", count: 20) + ".kv"
        let taken = CheckpointName.takenAwayName(for: name, inode: 1234)
        #expect(!CheckpointName.isCheckpoint(taken))
        #expect(!CheckpointName.isTemporary(taken))
        #expect(CheckpointName.originalName(ofTakenAway: taken) == name)
        #expect(CheckpointName.originalName(ofTakenAway: ".kvscrubd-taken.x.kv.12") == nil)
        #expect(CheckpointName.originalName(ofTakenAway: name) == nil)
    }
}
