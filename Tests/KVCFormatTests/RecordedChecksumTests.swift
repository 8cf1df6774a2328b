import Foundation
import Testing
@testable import KVCFormat
import KVCSimulation

/// Checksums recorded for v1 files: taken from a sound read, valid across the
/// engine's in-place updates (touch, tool-map rewrite), broken by damage to the
/// text or payload, and never applied to another file than the one recorded.
@Suite struct RecordedChecksumTests {
    /// Verifies `path` the way the daemon does: v1 bodies checksummed, compared with `record`.
    func verify(_ path: String, record: RecordedChecksum? = nil) throws -> VerifyReport {
        try Verifier(engine: nil, recorded: record).verify(path: path)
    }

    func record(_ path: String) throws -> RecordedChecksum {
        let r = try verify(path)
        #expect(r.verdict == .ok)
        let body = try #require(r.bodyChecksums)
        return body.recorded(at: 1_764_252_000) // 2025-11-27 14:00 UTC
    }

    @Test func v1_bodyChecksums_areTheCRC32COfTextAndPayload() throws {
        let d = TempDir()
        let text = "A v1 prompt whose checksums kvscrubd keeps."
        let p = try Fixture.store(in: d.path, version: 1, text: text, payloadBytes: 8192)
        let r = try verify(p)
        let body = try #require(r.bodyChecksums)
        let bytes = Bytes.read(p)
        let h = Bytes.header(p)
        let textStart = h.prologueSize
        let payloadStart = textStart + Int(h.textBytes)
        // Against the bit-at-a-time definition, not our own CRC code.
        #expect(body.textCRC == bitwiseCRC32C(Array(text.utf8)))
        #expect(body.payloadCRC == bitwiseCRC32C(Array(bytes[payloadStart..<payloadStart + Int(h.payloadBytes)])))
        var st = stat()
        #expect(stat(p, &st) == 0)
        #expect(body.key == RecordedChecksum.Key(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), textBytes: h.textBytes,
                                                 payloadBytes: h.payloadBytes, createdAt: h.createdAt))
        // Without a record nothing is claimed: "none".
        #expect(r.checksums == .none)
    }

    @Test func v1_plainVerifier_doesNotReadThePayload_theDaemonsDoes() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 1, payloadBytes: 1 << 20)
        let plain = try Verifier().verify(path: p)
        #expect(plain.bodyChecksums == nil)
        #expect(plain.bytesRead < 1 << 20)
        let daemon = try verify(p)
        #expect(daemon.bytesRead >= 1 << 20)
    }

    @Test func v1_matchingRecord_isComparedAndHolds() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 1)
        let rec = try record(p)
        let r = try verify(p, record: rec)
        #expect(r.verdict == .ok)
        #expect(r.checksums == .recorded)
    }

    @Test(arguments: ["payload", "text"])
    func v1_byteFlipAfterRecording_isCorrupt_citingTheRecord(region: String) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 1, payloadBytes: 64 << 10)
        let rec = try record(p)
        let h = Bytes.header(p)
        let textStart = h.prologueSize
        let payloadStart = textStart + Int(h.textBytes)
        // Past the payload's 52-byte prefix: structure checks alone cannot see this.
        let at = region == "payload" ? payloadStart + Int(h.payloadBytes) / 2 : textStart + 3
        var b = Bytes.read(p)
        b[at] ^= 0x10
        // In place, on the same inode (a bad sector or a stray write does not make a new file).
        let fd = open(p, O_WRONLY)
        #expect(pwrite(fd, &b[at], 1, off_t(at)) == 1)
        close(fd)
        if region == "payload" { #expect(try Verifier().verify(path: p).verdict == .ok, "structure alone passes it") }
        let r = try verify(p, record: rec)
        #expect(r.verdict == .corrupt)
        let mismatch = r.problems.filter { $0.region.rawValue == region && $0.detail.contains("recorded on 2025-11-27 14:00 UTC") }
        #expect(mismatch.count == 1, "\(r.problems)")
        let expected = region == "payload" ? rec.payloadCRC : rec.textCRC
        #expect(mismatch.first?.expectedCRC == expected)
        #expect(mismatch.first?.actualCRC != expected)
    }

    @Test func v1_touchesAndToolMapRewrites_keepTheRecordValid() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 1, toolMap: Fixture.map)
        let rec = try record(p)
        let updater = CheckpointUpdater()
        for i in 0..<50 {
            try updater.touch(path: p, now: 1_800_000_000 + UInt64(i))
            try updater.rewriteToolMap(path: p, toolMap: i % 3 == 0 ? ToolMap([]) : Fixture.map, now: 1_800_000_000 + UInt64(i))
            let r = try verify(p, record: rec)
            #expect(r.verdict == .ok && r.checksums == .recorded, "round \(i): \(r.problems)")
        }
    }

    @Test func v1_recordOfAnotherFile_isNeverApplied() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 1)
        let rec = try record(p)
        // The engine stores the same text again: a new inode renamed over the name (and another created_at).
        let again = try Fixture.store(in: d.path, version: 1, createdAt: Fixture.createdAt + 60, seed: 99)
        #expect(again == p)
        let r = try verify(p, record: rec)
        #expect(r.verdict == .ok)
        #expect(r.checksums == .none, "another file's record must not be compared")
        #expect(r.bodyChecksums?.key != rec.key)
        // Same inode, other created_at (a header rewritten by someone else): not the recorded life either.
        var other = rec
        other.key = try #require(r.bodyChecksums?.key)
        other.key.createdAt += 1
        other.payloadCRC ^= 1
        #expect(try verify(p, record: other).verdict == .ok)
    }

    @Test func v2_carriesItsOwn_noBodyChecksumsReported() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 2)
        let r = try verify(p)
        #expect(r.checksums == .crc32c)
        #expect(r.bodyChecksums == nil)
    }

    @Test func recordedAtText_isUTCMinutes() {
        let r = RecordedChecksum(key: .init(device: 1, inode: 2, textBytes: 3, payloadBytes: 4, createdAt: 5), textCRC: 0, payloadCRC: 0,
                                 recordedAt: 1_796_774_400 + 3 * 3600 + 7 * 60 + 9) // 2026-12-09 03:07:09 UTC
        #expect(r.recordedAtText == "2026-12-09 03:07 UTC")
    }
}
