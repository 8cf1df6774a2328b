import Foundation
import Synchronization
import Testing
@testable import KVCFormat
import KVCSimulation

@Suite struct UpdaterTests {
    @Test(arguments: [UInt8(1), 2])
    func touch_changesOnlyHitsLastUsedAndHeaderCRC_andKeepsTheFileOk(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version, toolMap: Fixture.map, hits: 2)
        let before = Bytes.read(p)
        let h = try CheckpointUpdater().touch(path: p, now: 1_800_000_000)
        let after = Bytes.read(p)
        #expect(h.hits == 3 && h.lastUsed == 1_800_000_000)
        #expect(after.count == before.count)
        var changed = Set<Int>()
        for i in 0..<before.count where before[i] != after[i] { changed.insert(i) }
        let allowed = Set(12..<16).union(32..<40).union(version == 2 ? Set(64..<68) : [])
        #expect(changed.isSubset(of: allowed), "changed bytes \(changed.sorted())")
        #expect(!changed.isEmpty)
        let r = try Verifier().verify(path: p)
        #expect(r.verdict == .ok, "\(r.problems)")
        #expect(Bytes.header(p).hits == 3)
    }

    @Test func touch_withExplicitHits_setsThem() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path)
        try CheckpointUpdater().touch(path: p, hits: 40, now: 5)
        #expect(Bytes.header(p).hits == 40)
        #expect(Bytes.header(p).lastUsed == 5)
    }

    @Test func touch_refusesADamagedV2Header_ratherThanLaunderingIt() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: 2)
        Bytes.flip(p, at: 9)
        let before = Bytes.read(p)
        #expect { try CheckpointUpdater().touch(path: p, now: 1) } throws: { ($0 as? KVCError)?.kind == .corrupt }
        #expect(Bytes.read(p) == before)
        #expect(try Verifier().verify(path: p).verdict == .corrupt)
    }

    @Test(arguments: [UInt8(1), 2])
    func toolMapRewrite_replacesTheTrailer_setsTheFlag_andKeepsTheFileOk(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version)  // no map yet
        let body = Array(Bytes.read(p)[Bytes.header(p).prologueSize...])
        let newMap = ToolMap([ToolMap.Entry(id: "call_9", dsml: String(repeating: "d", count: 300))])
        let h = try CheckpointUpdater().rewriteToolMap(path: p, toolMap: newMap, now: 77)
        #expect(h?.hasToolMap == true && h?.lastUsed == 77)
        let after = Bytes.read(p)
        let end = Int(Bytes.header(p).bodyEnd!)
        #expect(Array(after[Bytes.header(p).prologueSize..<end]) == Array(body[0..<(end - Bytes.header(p).prologueSize)]))
        #expect(ToolMap.decode(Array(after[end...])) == newMap)
        #expect(try Verifier().verify(path: p).verdict == .ok)
        // A shorter map truncates the old one away.
        try CheckpointUpdater().rewriteToolMap(path: p, toolMap: Fixture.map, now: 78)
        #expect(ToolMap.decode(Array(Bytes.read(p)[end...])) == Fixture.map)
        #expect(try Verifier().verify(path: p).verdict == .ok)
    }

    @Test func toolMapRewrite_withAnEmptyMap_changesNothing_likeTheEngine() throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, toolMap: Fixture.map)
        let before = Bytes.read(p)
        #expect(try CheckpointUpdater().rewriteToolMap(path: p, toolMap: ToolMap([]), now: 1) == nil)
        #expect(Bytes.read(p) == before)
    }

    /// The race the spec warns about, for real: one thread touches and
    /// rewrites the tool map as fast as it can while another verifies. The
    /// unlocked first pass does see torn headers and half-written trailers;
    /// the locked second look must clear every one of them.
    @Test(arguments: [UInt8(1), 2])
    func verifyingWhileTheEngineUpdates_neverReportsCorrupt(version: UInt8) throws {
        let d = TempDir()
        let p = try Fixture.store(in: d.path, version: version, payloadBytes: 64 << 10, toolMap: Fixture.map)
        let stop = Flag()
        let updates = Atomic<Int>(0)
        let failures = Mutex<[String]>([])
        // A real thread, like the engine's own process: not the test's task pool.
        let writer = Thread {
            var n: UInt64 = 0
            let maps = [Fixture.map, ToolMap([ToolMap.Entry(id: "x", dsml: String(repeating: "y", count: 5000))])]
            while !stop.isSet {
                n += 1
                do {
                    try CheckpointUpdater().touch(path: p, now: n)
                    try CheckpointUpdater().rewriteToolMap(path: p, toolMap: maps[Int(n % 2)], now: n)
                } catch { failures.withLock { $0.append("\(error)") } }
                updates.add(1, ordering: .relaxed)
            }
        }
        writer.start()
        var verifies = 0
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(60)
        while (verifies < 300 || updates.load(ordering: .relaxed) < 300) && clock.now < deadline {
            let r = try Verifier().verify(path: p)
            verifies += 1
            #expect(r.verdict == .ok, "\(r.problems)")
            if r.verdict != .ok { break }
        }
        stop.set()
        #expect(updates.load(ordering: .relaxed) >= 300, "the writer must really have raced the verifier")
        #expect(verifies >= 300)
        #expect(failures.withLock { $0 }.isEmpty)
    }
}

/// A stop signal shared with a detached task.
final class Flag: Sendable {
    private let storage = Mutex(false)
    var isSet: Bool { storage.withLock { $0 } }
    func set() { storage.withLock { $0 = true } }
}

