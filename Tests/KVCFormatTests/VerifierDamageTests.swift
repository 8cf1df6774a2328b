import Foundation
import Testing
@testable import KVCFormat
import KVCSimulation

/// Every kind of damage in every region, for both versions, and hostile input.
@Suite struct VerifierDamageTests {
    /// Verifies as the engine that wrote the fixture (by its version byte as stored): v1 as ds4 from
    /// e8e8779, v2 as PR #146, so every rule of the running generation applies.
    func verify(_ path: String) throws -> VerifyReport {
        // Four bytes read plainly: a whole file held as Data shows up as a leak under LeakSanitizer.
        var head = [UInt8](repeating: 0, count: 4)
        let fd = open(path, O_RDONLY)
        let n = fd >= 0 ? read(fd, &head, 4) : 0
        if fd >= 0 { close(fd) }
        return try Verifier(engine: Fixture.engine(version: n == 4 && head[3] == 2 ? 2 : 1)).verify(path: path)
    }

    func problems(_ r: VerifyReport, in region: Region) -> [Problem] {
        r.problems.filter { $0.region == region && $0.severity == .corrupt }
    }

    /// Layout of a fixture file: where each region starts.
    struct Layout {
        var text: Int, payload: Int, trailer: Int, end: Int
        init(_ path: String) {
            let h = Bytes.header(path)
            text = h.prologueSize
            payload = text + Int(h.textBytes)
            trailer = payload + Int(h.payloadBytes)
            end = Bytes.read(path).count
        }
    }

    // MARK: header

    @Test func v2_headerByteFlip_isCorruptHeader_withBothCRCs() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 2)
        let before = Bytes.header(p)
        Bytes.flip(p, at: 13) // hits
        let r = try verify(p)
        #expect(r.verdict == .corrupt)
        let hp = problems(r, in: .header)
        #expect(hp.count == 1)
        #expect(hp.first?.expectedCRC == before.headerCRC)
        #expect(hp.first?.actualCRC == Bytes.header(p).computedHeaderCRC)
        #expect(hp.first?.actualCRC != hp.first?.expectedCRC)
        #expect(r.unchangedDuringRead)
    }

    @Test func v2_damagedCRCFieldItself_isCorruptHeader() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 2)
        Bytes.flip(p, at: 57) // payload_crc field: the header CRC covers it
        let r = try verify(p)
        #expect(r.verdict == .corrupt)
        #expect(!problems(r, in: .header).isEmpty)
    }

    @Test(arguments: [UInt8(1), 2])
    func tokensZero_isCorrupt(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version)
        Bytes.mutateHeader(p, reseal: true) { $0.tokens = 0 }
        let r = try verify(p)
        #expect(r.verdict == .corrupt)
        #expect(problems(r, in: .header).contains { $0.detail.contains("token count is 0") })
    }

    @Test(arguments: [UInt8(1), 2])
    func quantBits3_isCorrupt(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version)
        Bytes.mutateHeader(p, reseal: true) { $0.quantBits = 3 }
        let r = try verify(p)
        #expect(r.verdict == .corrupt)
        #expect(problems(r, in: .header).contains { $0.detail.contains("quant_bits is 3") })
    }

    @Test(arguments: [UInt8(1), 2])
    func badMagic_isNotAKVCFile_incompatibleNotCorrupt(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version)
        Bytes.flip(p, at: 1)
        let r = try verify(p)
        // No magic, no layout: another tool's file under a checkpoint's name is never judged (revision 3).
        #expect(r.verdict == .incompatible)
        #expect(r.problems.first?.detail.contains("magic") == true)
    }

    @Test(arguments: [UInt8(1), 2])
    func tokensZeroOrBadQuant_inAnotherGeneration_isIncompatible_notCorrupt(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version)
        Bytes.mutateHeader(p, reseal: true) { $0.tokens = 0; $0.quantBits = 3 }
        // The other engine's rules are its business: no engine indexes the file, nothing proves damage.
        let r = try Verifier(engine: Fixture.engine(version: version == 2 ? 1 : 2)).verify(path: p)
        #expect(r.verdict == .incompatible)
        #expect(r.corruptProblems.isEmpty)
    }

    // MARK: incompatible

    @Test(arguments: [UInt8(0), 3, 200])
    func unknownVersion_isIncompatible_notCorrupt(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 2)
        var b = Bytes.read(p)
        b[3] = version
        Bytes.write(b, to: p)
        let r = try verify(p)
        #expect(r.verdict == .incompatible)
        #expect(r.corruptProblems.isEmpty)
        #expect(r.checksums == .none)
    }

    @Test(arguments: [UInt8(1), 2])
    func otherPayloadABI_isIncompatible(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version)
        Bytes.mutateHeader(p, reseal: true) { $0.payloadABI = 3 }
        let r = try Verifier(engine: .ds4e8e8779).verify(path: p)
        #expect(r.verdict == .incompatible)
        #expect(r.problems.map(\.region) == [.header])
        // Nothing hard-codes an ABI: with the fork's own ABI in force the same file is ok,
        // and with none known (an empty directory's auto) nothing is incompatible for its ABI.
        #expect(try Verifier(engine: Generation(fileVersion: version, payloadABI: 3, payloadVersion: version == 2 ? 1 : 2)).verify(path: p).verdict == .ok)
        #expect(try Verifier(engine: nil).verify(path: p).verdict == .ok)
    }

    @Test(arguments: [UInt8(1), 2])
    func pr146Generation_bytes7And20Zero_isOkUnderItsOwnABI_andIncompatibleUnderTheKvstore(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version, modelID: 0, payloadABI: 0, payloadVersion: 1)
        #expect(Bytes.read(p)[7] == 0 && Bytes.read(p)[20] == 0)
        let ok = try Verifier(engine: .pr146).verify(path: p)
        #expect(ok.verdict == .ok, "\(ok.problems)")
        #expect(ok.problems.isEmpty)
        let other = try Verifier(engine: .ds4e8e8779).verify(path: p)
        #expect(other.verdict == .incompatible)
        #expect(other.corruptProblems.isEmpty)
    }

    // MARK: text and name

    @Test func v2_textFlip_isTextCRCAndNameMismatch() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 2)
        let l = Layout(p)
        Bytes.flip(p, at: l.text + 3)
        let r = try verify(p)
        #expect(r.verdict == .corrupt)
        #expect(problems(r, in: .text).count == 1)
        #expect(problems(r, in: .name).count == 1)
        #expect(problems(r, in: .header).isEmpty)
    }

    @Test func v1_textFlip_isCaughtByTheNameCheck() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 1)
        Bytes.flip(p, at: Layout(p).text + 3)
        let r = try verify(p)
        #expect(r.verdict == .corrupt)
        #expect(problems(r, in: .name).count == 1)
        #expect(r.checksums == .none)
    }

    @Test(arguments: [UInt8(1), 2])
    func fileRenamedToAnotherSHA_isCorruptName(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version)
        let q = d.file(String(repeating: "0", count: 40) + ".kv")
        try FileManager.default.moveItem(atPath: p, toPath: q)
        let r = try verify(q)
        #expect(r.verdict == .corrupt)
        #expect(r.corruptProblems.map(\.region) == [.name])
    }

    // MARK: payload

    @Test func v2_payloadFlipAnywhere_isCorruptPayload() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 2, payloadBytes: 3 << 20) // several read chunks
        let l = Layout(p)
        for offset in [l.payload + 100, l.payload + (1 << 20) + 5, l.trailer - 1] {
            Bytes.flip(p, at: offset)
            let r = try verify(p)
            #expect(r.verdict == .corrupt, "offset \(offset)")
            #expect(r.corruptProblems.map(\.region) == [.payload], "offset \(offset)")
            Bytes.flip(p, at: offset) // undo
            #expect(try verify(p).verdict == .ok)
        }
    }

    @Test func v1_payloadTensorFlip_isNotDetectable_andSaysNoChecksum() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 1)
        Bytes.flip(p, at: Layout(p).trailer - 10)
        let r = try verify(p)
        // v1 has no CRC: the checker must not pretend it verified one.
        #expect(r.verdict == .ok)
        #expect(r.checksums == .none)
    }

    @Test(arguments: [UInt8(1), 2])
    func payloadPrefixDamage_isCorruptPayload(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version)
        let start = Layout(p).payload
        for (field, detail) in [(0, "magic"), (2, "context"), (7, "tokens")] {
            var b = Bytes.read(p)
            let saved = Array(b[start + field * 4..<start + field * 4 + 4])
            b[start + field * 4] &+= 1
            Bytes.write(b, to: p)
            let r = try verify(p)
            #expect(r.verdict == .corrupt)
            #expect(problems(r, in: .payload).contains { $0.detail.contains(detail) }, "field \(field): \(r.problems)")
            b.replaceSubrange(start + field * 4..<start + field * 4 + 4, with: saved)
            Bytes.write(b, to: p)
        }
    }

    /// Revision 2 called a payload version other than 1 corrupt, and so every checkpoint ds4 from
    /// e8e8779 writes. A version, layer count, head dimension or vocabulary is another generation
    /// or model: never damage, and the engine in force decides whether it is even incompatible.
    @Test(arguments: [UInt8(1), 2])
    func payloadVersionAndModelShape_areNeverCorrupt(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version)
        let start = Layout(p).payload
        var b = Bytes.read(p)
        b[start + 4] &+= 1                       // payload version
        for field in [8, 9, 10] { b[start + field * 4] &+= 1 } // layers, head dim, indexer head dim
        Bytes.write(b, to: p)
        if version == 2 { Bytes.reseal(p) }
        let r = try verify(p)
        #expect(r.verdict == .incompatible, "\(r.problems)")
        #expect(r.corruptProblems.isEmpty)
        #expect(r.problems.contains { $0.detail.contains("payload version") })
        // With no generation known, or with that payload version's engine in force, the file is ok.
        #expect(try Verifier(engine: nil).verify(path: p).verdict == .ok)
        var g = Fixture.engine(version: version)
        g.payloadVersion = g.payloadVersion.map { $0 + 1 }
        #expect(try Verifier(engine: g).verify(path: p).verdict == .ok)
    }

    @Test func payloadOfAnotherKind_DSVL_isIncompatible() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 1)
        var b = Bytes.read(p)
        b[Layout(p).payload + 3] = UInt8(ascii: "L")
        Bytes.write(b, to: p)
        let r = try verify(p)
        #expect(r.verdict == .incompatible)
        #expect(r.corruptProblems.isEmpty)
    }

    @Test func payloadShorterThanItsPrefixClaims_isCorrupt() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 1)
        var b = Bytes.read(p)
        let vocabAt = Layout(p).payload + 11 * 4
        b[vocabAt + 3] = 0x10 // vocabulary of ~268M entries
        Bytes.write(b, to: p)
        let r = try verify(p)
        #expect(problems(r, in: .payload).contains { $0.detail.contains("claims at least") })
    }

    // MARK: trailer

    @Test func v2_trailerFlip_isCorruptTrailer() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 2, toolMap: Fixture.map)
        Bytes.flip(p, at: Layout(p).end - 2)
        let r = try verify(p)
        #expect(r.verdict == .corrupt)
        #expect(r.corruptProblems.map(\.region) == [.trailer])
        #expect(r.corruptProblems.first?.expectedCRC != nil)
        #expect(r.unchangedDuringRead)
    }

    /// The engine reads a tool map leniently: a map that does not parse is a warning in v1 (no
    /// evidence), and in v2 the tool-map CRC is what proves damage.
    @Test(arguments: [UInt8(1), 2])
    func toolMapThatDoesNotEndAtEOF_isAWarning_v2ByItsCRC(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version, toolMap: Fixture.map)
        var b = Bytes.read(p)
        b.append(0)
        Bytes.write(b, to: p)
        let r = try verify(p)
        #expect(r.verdict == (version == 2 ? .corrupt : .ok))
        #expect(r.problems.contains { $0.severity == .warning && $0.detail.contains("more bytes") })
        #expect(problems(r, in: .trailer).allSatisfy { $0.expectedCRC != nil })
    }

    @Test(arguments: [UInt8(1), 2])
    func toolMapWithHugeEntryCount_isReported_withoutAllocating(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version, toolMap: Fixture.map)
        var b = Bytes.read(p)
        let t = Layout(p).trailer
        b.replaceSubrange(t + 4..<t + 8, with: [0xFF, 0xFF, 0xFF, 0xFF])
        Bytes.write(b, to: p)
        let r = try verify(p)
        #expect(r.problems.contains { $0.detail.contains("4294967295 entries") })
        #expect(r.verdict == (version == 2 ? .corrupt : .ok))
    }

    @Test func v1_bytesAfterPayloadWithoutFlag_isAWarningOnly() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 1)
        var b = Bytes.read(p)
        b += Fixture.map.encoded()
        Bytes.write(b, to: p)
        let r = try verify(p)
        #expect(r.verdict == .ok)
        #expect(r.problems.map(\.severity) == [.warning])
        #expect(r.problems.first?.region == .trailer)
    }

    @Test func v2_bytesAfterPayloadWithoutFlag_areCorrupt_unlessTheCRCCoversThem() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 2)
        var b = Bytes.read(p)
        b += [1, 2, 3]
        Bytes.write(b, to: p)
        #expect(try verify(p).corruptProblems.map(\.region) == [.trailer])
        Bytes.mutateHeader(p, reseal: true) { $0.trailerCRC = CRC32C.checksum([1, 2, 3] as [UInt8]) }
        let r = try verify(p)
        #expect(r.verdict == .ok, "\(r.problems)")
    }

    // MARK: size and hostile input

    @Test(arguments: [UInt8(1), 2])
    func truncatedFile_isCorruptSize(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version)
        let b = Bytes.read(p)
        for cut in [b.count - 1, Layout(p).payload + 10, Layout(p).text + 2, 60, 30, 3, 0] where cut < b.count {
            Bytes.write(Array(b[0..<cut]), to: p)
            let r = try verify(p)
            #expect(r.verdict == .corrupt, "cut at \(cut)")
            #expect(r.corruptProblems.contains { $0.region == .size || $0.region == .header }, "cut at \(cut): \(r.problems)")
        }
    }

    @Test func emptyFile_isCorruptSize() throws {
        let d = TempDir()
        let p = d.file(String(repeating: "1", count: 40) + ".kv")
        Bytes.write([], to: p)
        let r = try verify(p)
        #expect(r.verdict == .corrupt)
        #expect(r.problems.first?.region == .size)
    }

    @Test(arguments: [UInt8(1), 2])
    func hugeLengthFields_areAVerdict_notAnAllocation(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version)
        for change in [{ (h: inout KVCHeader) in h.payloadBytes = 1 << 62 },
                       { (h: inout KVCHeader) in h.payloadBytes = UInt64.max },
                       { (h: inout KVCHeader) in h.textBytes = UInt32.max }] {
            let saved = Bytes.read(p)
            Bytes.mutateHeader(p, reseal: true, change)
            let r = try verify(p)
            #expect(r.verdict == .corrupt)
            #expect(r.corruptProblems.contains { $0.region == .size })
            #expect(r.bytesRead < 1 << 20)
            Bytes.write(saved, to: p)
        }
    }

    @Test func randomBytes_neverCrash_andAreNeverOk() throws {
        let d = TempDir()
        var rng = SplitMix64(seed: 5)
        let p = d.file(String(repeating: "2", count: 40) + ".kv")
        for len in [1, 4, 51, 52, 67, 68, 69, 500, 70_000] {
            var b = (0..<len).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            Bytes.write(b, to: p)
            #expect(try verify(p).verdict != .ok)
            // Same, behind a valid magic and version, so the length fields are random.
            if len >= 4 {
                b[0] = 0x4B; b[1] = 0x56; b[2] = 0x43; b[3] = UInt8(len % 2 + 1)
                Bytes.write(b, to: p)
                #expect(try verify(p).verdict != .ok)
            }
        }
    }

    @Test func nonCheckpoints_areIgnored_withoutBeingOpened() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path)
        let sha = String(p.split(separator: "/").last!.prefix(40))
        try FileManager.default.copyItem(atPath: p, toPath: d.file(sha + ".kv.tmp.99"))
        try FileManager.default.createSymbolicLink(atPath: d.file(String(repeating: "3", count: 40) + ".kv"), withDestinationPath: p)
        try FileManager.default.createDirectory(atPath: d.file(String(repeating: "4", count: 40) + ".kv"), withIntermediateDirectories: false)
        Bytes.write([1, 2], to: d.file("notes.txt"))
        for name in [sha + ".kv.tmp.99", String(repeating: "3", count: 40) + ".kv", String(repeating: "4", count: 40) + ".kv", "notes.txt"] {
            let r = try verify(d.file(name))
            #expect(r.verdict == .ignored, "\(name)")
            #expect(r.note != nil)
        }
    }

    @Test func missingFile_throwsAnIOErrorNamingThePath() {
        #expect {
            try verify("/nonexistent/" + String(repeating: "5", count: 40) + ".kv")
        } throws: { e in
            (e as? KVCError)?.kind == .io && (e as? KVCError)?.path?.hasPrefix("/nonexistent/") == true
        }
    }

    @Test func multiChunkPayload_verifiesOk_andIsReadWhole() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 2, payloadBytes: 64 << 20)
        let r = try verify(p)
        #expect(r.verdict == .ok)
        #expect(r.bytesRead >= 64 << 20)
    }
}
