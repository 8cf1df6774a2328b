import Foundation
import Testing
import KVCFormat
import KVCSimulation
@testable import KVScrubDaemon
#if canImport(Glibc)
import Glibc
#endif

/// The index maintainer's timed work in simulated time (`ManualClock`), in
/// process, on real files and real inotify: the evict timer, superseded
/// generations, orphaned temporaries, regrets and the engine's own deletions.
/// The maintenance thread loops over `tick` and `apply`; here the test calls
/// them. (These were end-to-end only, with a daemon and real waits.)
@Suite struct MaintenanceTests {
    /// Bytes the index holds.
    static func total(_ f: PartsFixture) -> UInt64 { f.index.read { $0.index.totalBytes } }

    @Test func theEvictTimer_evaluatesOnceEachInterval_andNotBetween() throws {
        let f = try PartsFixture { c in
            c.budgetMB = 1
            c.evictIntervalSeconds = 60
        }
        var nextEvict = -Double.infinity
        let t0 = f.clock.now()
        for seed in 0..<3 { try f.write(UInt64(seed), bytes: 256 << 10) }
        try f.indexAsAtStartUp()
        // The first tick evaluates (under budget: nothing goes) and sets the timer.
        #expect(abs(f.maintainer.tick(in: f.dir, nextEvict: &nextEvict) - 60) < 0.001)
        #expect(nextEvict == t0 + 60)
        // Over budget now, seen by a scan (no arrival, so no pre-store pass): only the timer evicts.
        for seed in 3..<8 { try f.write(UInt64(seed), bytes: 256 << 10) }
        try f.indexAsAtStartUp()
        let over = Self.total(f)
        #expect(over > 1 << 20)
        f.clock.set(t0 + 59)
        #expect(abs(f.maintainer.tick(in: f.dir, nextEvict: &nextEvict) - 1) < 0.001, "waits for the timer")
        #expect(Self.total(f) == over, "evicted before the timer was due")
        f.clock.set(t0 + 60)
        #expect(abs(f.maintainer.tick(in: f.dir, nextEvict: &nextEvict) - 60) < 0.001)
        #expect(Self.total(f) <= 1 << 20)
        let evicted = f.counts.read { $0.counters.evictedBudget }
        #expect(evicted >= 3 && f.logged(.evicted).count == Int(evicted))
        // A clock set back by more than the interval does not hold the timer off for that long.
        f.clock.set(t0 - 3600)
        f.maintainer.tick(in: f.dir, nextEvict: &nextEvict)
        #expect(nextEvict == t0 - 3600 + 60)
    }

    /// A pid no process has: a child that has exited and been reaped.
    static func deadPID() throws -> Int32 {
        let t = Process()
        t.executableURL = URL(fileURLWithPath: "/bin/true")
        try t.run()
        t.waitUntilExit()
        return t.processIdentifier
    }

    @Test func anOrphanedTemporary_goesAtTheSweepAfterItWasSeenOld_onlyIfUnchanged() throws {
        let f = try PartsFixture { c in
            c.orphanTempMinutes = 1 // swept every 15 s
            c.evictIntervalSeconds = 1
        }
        let dead = try Self.deadPID()
        let sha = String(repeating: "ab", count: 20), other = String(repeating: "cd", count: 20)
        let orphan = "\(sha).kv.tmp.\(dead)", growing = "\(other).kv.tmp.\(dead)"
        for name in [orphan, growing] { try Data(repeating: 7, count: 4096).write(to: URL(fileURLWithPath: f.cache + "/" + name)) }
        let written = f.clock.now()
        var nextEvict = -Double.infinity
        func sweep(at t: Double) {
            f.clock.set(t)
            f.maintainer.tick(in: f.dir, nextEvict: &nextEvict)
        }
        // Younger than the idle time: not even a candidate.
        sweep(at: written + 30)
        #expect(f.exists(orphan) && f.exists(growing))
        // Old: seen once (a candidate), still there.
        sweep(at: written + 62)
        #expect(f.exists(orphan) && f.exists(growing))
        // One temporary changes before the next sweep (a slow store still writing).
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: f.cache + "/" + growing))
        try h.seekToEnd()
        try h.write(contentsOf: Data(repeating: 8, count: 10))
        try h.close()
        // Not yet the next sweep.
        sweep(at: written + 76)
        #expect(f.exists(orphan))
        // The next sweep: the unchanged one goes; the changed one is young again, and stays.
        sweep(at: written + 77)
        #expect(!f.exists(orphan), "an unchanged old temporary of a dead writer goes at the second sweep")
        #expect(f.exists(growing), "a temporary that changed since the first look stays")
        let c = f.counts.read { $0.counters }
        #expect(c.orphansRemoved == 1 && c.orphanBytesRemoved == 4096)
        #expect(f.logged(.orphanRemoved).first?.2["writer"] == .string("pid-\(dead)-gone"))
    }

    /// Files of ds4 before e8e8779 (v1, ABI 0, payload version 1) beside the engine in force's: reclaimed
    /// the grace period after the old generation's last activity, oldest first, never an agent session.
    @Test func aSupersededGeneration_isReclaimed_whenItsGraceIsOver_notBefore() throws {
        let f = try PartsFixture { c in
            c.budgetMB = 0
            c.evictIntervalSeconds = 1
            c.supersededGraceHours = 1
        }
        let now = UInt64(f.clock.now())
        func store(_ seed: UInt64, _ gen: EngineGeneration, createdAt: UInt64, reason: KVCReason = .cold) throws -> String {
            var m = CheckpointWriter.Metadata(reason: reason, modelID: gen.modelByte(1), quantBits: 4, ctxSize: 4096, tokens: 1, createdAt: createdAt)
            m.payloadABI = gen.payloadABI
            let path = try CheckpointWriter(version: 1).store(
                in: f.cache, text: Array("generation \(seed)".utf8),
                payload: SyntheticPayload(byteCount: 32 << 10, tokens: 1, ctxSize: 4096, seed: seed, version: gen.payloadVersion), metadata: m)
            return (path as NSString).lastPathComponent
        }
        // The old generation's last activity ten minutes ago; the engine in force's since.
        let old = try [store(1, .pr146, createdAt: now - 1200), store(2, .pr146, createdAt: now - 600)]
        let session = try store(3, .pr146, createdAt: now - 600, reason: .agentSession)
        let current = try [store(4, .kvstore, createdAt: now - 60), store(5, .kvstore, createdAt: now)]
        try f.indexAsAtStartUp()
        #expect(f.index.read { $0.index.engineABI.generation } == .ds4e8e8779)
        var nextEvict = -Double.infinity
        // Reclaimable at (now - 600) + 3600.
        f.clock.set(Double(now) + 2999)
        f.maintainer.tick(in: f.dir, nextEvict: &nextEvict)
        #expect(old.allSatisfy(f.exists), "reclaimed before the grace was over")
        f.clock.set(Double(now) + 3000)
        f.maintainer.tick(in: f.dir, nextEvict: &nextEvict)
        #expect(!old.contains(where: f.exists))
        #expect(f.exists(session) && current.allSatisfy(f.exists))
        #expect(f.logged(.supersededReclaimed).compactMap { $0.2["file"].map { "\($0)" } } == old, "oldest first")
        #expect(f.counts.read { $0.counters.evictedSuperseded } == 2)
        #expect(f.index.read { s in old.allSatisfy { s.index[$0] == nil } })
    }

    /// An evicted checkpoint the engine writes again within the regret window is a regret; one the
    /// engine deletes itself is counted as the engine's, not the daemon's.
    @Test func aRewriteAfterEviction_isARegret_andTheEnginesOwnDeletionIsCountedAsIts() throws {
        let f = try PartsFixture { c in
            c.budgetMB = 1
            c.evictIntervalSeconds = 60
            c.regretWindowHours = 1
        }
        var names: [String] = []
        for seed in 0..<6 { names.append(try f.write(UInt64(seed), bytes: 256 << 10)) }
        try f.indexAsAtStartUp()
        var nextEvict = -Double.infinity
        f.maintainer.tick(in: f.dir, nextEvict: &nextEvict)
        let gone = names.filter { !f.exists($0) }
        let evicted = try #require(gone.first)
        // The engine stores the same prefix again half an hour later.
        f.clock.advance(by: 1800)
        let seed = UInt64(names.firstIndex(of: evicted)!)
        #expect(try f.write(seed, bytes: 256 << 10) == evicted)
        f.applyEvents()
        #expect(f.counts.read { $0.counters.regrets } == 1)
        let regret = try #require(f.logged(.regret).first)
        #expect(regret.2["file"] == .string(evicted) && regret.2["seconds"] == "1800")
        #expect(f.index.read { $0.ledger.regretsLastDay(now: f.clock.now()).count } == 1)
        // The engine deletes a checkpoint itself: counted as the engine's deletion, not an eviction.
        let kept = try #require(names.first { f.exists($0) && $0 != evicted })
        let bytes = try #require(f.index.read { $0.index[kept]?.fileSize })
        let before = f.counts.read { $0.counters.evictedFiles }
        try FileManager.default.removeItem(atPath: f.cache + "/" + kept)
        f.applyEvents()
        let c = f.counts.read { $0.counters }
        #expect(c.engineDeletedFiles == 1 && c.engineDeletedBytes == bytes && c.evictedFiles == before)
        #expect(f.index.read { $0.index[kept] } == nil)
        #expect(f.reports.status().engineDeletedLastDay?.files == 1)
    }
}
