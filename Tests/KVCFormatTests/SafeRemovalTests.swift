import Foundation
import Testing
@testable import KVCFormat

/// The removal rule's steps on real files (kvc-format.md revision 2,
/// "Removing a file as corrupt"): settle, second look, atomic take-away,
/// quarantine across file systems, and recovery of leftover private names.
@Suite struct SafeRemovalTests {
    func damaged(_ d: TempDir) throws -> (path: String, name: String, report: VerifyReport) {
        let p = try Fixture.store(in: d.path, version: 2, payloadBytes: 32 << 10)
        Bytes.flip(p, at: 68 + 40 + 1000) // inside the payload
        let name = String(p.split(separator: "/").last!)
        let r = try Verifier().verify(path: p)
        #expect(r.verdict == .corrupt && r.unchangedDuringRead)
        return (p, name, r)
    }

    func privateNames(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { CheckpointName.isTakenAway($0) }
    }

    @Test func aFileThatChangedRecently_isNotRemovedUntilItSettles_thenIsRemoved() throws {
        let d = TempDir()
        let (p, name, first) = try damaged(d)
        let dir = try CacheDirectory(path: d.path)
        let changed = first.after!.lastChange
        let early = try dir.removeIfCorrupt(name: name, first: first, verifier: Verifier(), settle: 5, now: { changed + 1 }) { _ in .unlink }
        guard case .notSettled(let wait) = early else { Issue.record("expected notSettled, got \(early)"); return }
        #expect(wait > 3.9 && wait <= 4.0)
        #expect(FileManager.default.fileExists(atPath: p))
        let late = try dir.removeIfCorrupt(name: name, first: first, verifier: Verifier(), settle: 5, now: { changed + 6 }) { _ in .unlink }
        guard case .removed = late else { Issue.record("expected removed, got \(late)"); return }
        #expect(!FileManager.default.fileExists(atPath: p))
        #expect(privateNames(d.path).isEmpty)
    }

    @Test func aFileRewrittenSinceItsVerdict_isKept() throws {
        let d = TempDir()
        let (p, name, first) = try damaged(d)
        // The engine rewrites the header in place after the verdict (a touch's one write).
        let fd = open(p, O_WRONLY)
        let head = Array(Bytes.read(p)[0..<64])
        _ = head.withUnsafeBytes { pwrite(fd, $0.baseAddress, 64, 0) }
        close(fd)
        let dir = try CacheDirectory(path: d.path)
        let outcome = try dir.removeIfCorrupt(name: name, first: first, verifier: Verifier(), settle: 0, now: { Date().timeIntervalSince1970 + 60 }) { _ in .unlink }
        guard case .changed = outcome else { Issue.record("expected changed, got \(outcome)"); return }
        #expect(FileManager.default.fileExists(atPath: p))
    }

    @Test func aVerdictFromADisturbedRead_neverStartsARemoval() throws {
        let d = TempDir()
        var (p, name, first) = try damaged(d)
        first.before?.modifiedAtNanos -= 1 // as if the file changed under the read
        let dir = try CacheDirectory(path: d.path)
        let outcome = try dir.removeIfCorrupt(name: name, first: first, verifier: Verifier(), settle: 0, now: { Date().timeIntervalSince1970 + 60 }) { _ in .unlink }
        guard case .changed = outcome else { Issue.record("expected changed, got \(outcome)"); return }
        #expect(FileManager.default.fileExists(atPath: p))
    }

    @Test func theTakeAway_putsBackAFileTheEngineStoredAfterTheSecondLook() throws {
        let d = TempDir()
        let (p, name, first) = try damaged(d)
        // The engine renames a fresh store over the name after the verdict: a new inode.
        let other = TempDir()
        let fresh = try Fixture.store(in: other.path, version: 2, payloadBytes: 32 << 10)
        let tmp = p + ".tmp.1"
        try FileManager.default.copyItem(atPath: fresh, toPath: tmp)
        #expect(rename(tmp, p) == 0)
        let dir = try CacheDirectory(path: d.path)
        let outcome = try dir.takeAway(name: name, stamp: first.after!, report: first, disposal: .unlink)
        guard case .replaced = outcome else { Issue.record("expected replaced, got \(outcome)"); return }
        #expect(Bytes.read(p) == Bytes.read(fresh), "the engine's new file is back under its name")
        #expect(privateNames(d.path).isEmpty)
    }

    @Test func quarantine_onAnotherFileSystem_copiesSyncsThenUnlinks() throws {
        let d = TempDir()
        let (p, name, first) = try damaged(d)
        let bytes = Bytes.read(p)
        let qPath = "/dev/shm/kvc-quarantine-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: qPath, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: qPath) }
        let q = try CacheDirectory(path: qPath)
        let dir = try CacheDirectory(path: d.path)
        let outcome = try dir.removeIfCorrupt(name: name, first: first, verifier: Verifier(), settle: 0, now: { Date().timeIntervalSince1970 + 60 }) { _ in
            .quarantine(CacheDirectory.Quarantine(directory: q))
        }
        guard case .quarantined(_, let to) = outcome else { Issue.record("expected quarantined, got \(outcome)"); return }
        #expect(to == qPath + "/" + name)
        #expect(Bytes.read(to) == bytes)
        #expect(!FileManager.default.fileExists(atPath: p))
        #expect(privateNames(d.path).isEmpty)
    }

    @Test func leftoverPrivateNames_areRemovedWhenCorrupt_andPutBackWhenGood() throws {
        let d = TempDir()
        let (p, name, _) = try damaged(d)
        let badTaken = CheckpointName.takenAwayName(for: name, inode: 1)
        #expect(rename(p, d.file(badTaken)) == 0)
        let good = try Fixture.store(in: d.path, version: 1, text: "another text", payloadBytes: 32 << 10)
        let goodName = String(good.split(separator: "/").last!)
        let goodTaken = CheckpointName.takenAwayName(for: goodName, inode: 2)
        #expect(rename(good, d.file(goodTaken)) == 0)
        let dir = try CacheDirectory(path: d.path)
        let scan = try dir.scan()
        #expect(Set(scan.takenAway) == [badTaken, goodTaken] && scan.entries.isEmpty, "private names are never indexed")
        #expect(dir.recoverTakenAway(badTaken, verifier: Verifier(), disposal: .unlink) == .removed(name))
        #expect(dir.recoverTakenAway(goodTaken, verifier: Verifier(), disposal: .unlink) == .putBack(goodName))
        #expect(FileManager.default.fileExists(atPath: good))
        #expect(privateNames(d.path).isEmpty)
    }
}
