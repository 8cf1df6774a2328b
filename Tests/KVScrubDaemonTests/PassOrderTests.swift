import Testing
import KVCFormat
@testable import KVScrubDaemon

/// The scrub pass's walk (`PassOrder`, through `DaemonState.Inner`) and the
/// new-file queue (`DueQueue`), in process, against the plain definitions
/// they replace: thousands of random arrivals, removals, replacements and
/// steps, every answer compared with "the smallest name after the cursor" and
/// "every name after the cursor, counted".
@Suite struct PassOrderTests {
    struct Rng {
        var s: UInt64
        mutating func next(_ n: Int) -> Int {
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Int((s >> 33) % UInt64(n))
        }
    }

    static func entry(_ i: Int, size: UInt64) -> CacheEntry {
        let sha = String(repeating: "0", count: 36) + String(format: "%04x", i)
        return CacheEntry(sha: sha, header: nil, fileSize: size, identity: FileIdentity(device: 1, inode: UInt64(i)), unusable: nil)
    }

    /// The index with the scrubber's side of a pass: what the walk must follow.
    struct Scene {
        var index = CacheIndex()
        var progress = ScrubProgress()
        mutating func left() -> (files: Int, bytes: UInt64) {
            let l = index.passLeft(progress.passStartedAt, cursor: progress.cursor)
            return (progress.filesDone + l.files, l.bytes)
        }
    }

    /// What the walk must equal: the naive filter and count over the whole index.
    static func naive(_ s: Scene) -> (next: String?, files: Int, bytes: UInt64) {
        let left = s.index.entries.filter { k, _ in s.progress.cursor.map { k > $0 } ?? true }
        return (left.keys.min(), s.progress.filesDone + left.count, left.values.reduce(0) { $0 + $1.fileSize })
    }

    @Test(arguments: [1, 2, 3, 4, 5])
    func randomChurnDuringPasses_matchesTheNaiveWalk(seed: Int) {
        var rng = Rng(s: UInt64(seed))
        var s = Scene()
        for i in 0..<300 { s.index.insert(Self.entry(i * 2, size: UInt64(100 + i))) }
        var passes = 0
        var steps = 0
        for round in 0..<4000 {
            if s.progress.passStartedAt == nil {
                s.progress.passStartedAt = Double(round)
                s.progress.cursor = nil
                s.progress.filesDone = 0
                passes += 1
            }
            switch rng.next(10) {
            case 0, 1: s.index.insert(Self.entry(rng.next(800), size: UInt64(1 + rng.next(1000))))   // arrival or replacement
            case 2:
                let keys = s.index.entries.keys.sorted()
                if !keys.isEmpty { _ = s.index.remove(keys[rng.next(keys.count)]) }
            case 3: _ = s.index.remove(Self.entry(rng.next(800), size: 0).fileName)
            case 4 where round % 500 == 0:
                // A restart: the walk is rebuilt from the persisted cursor.
                var restored = Scene()
                restored.index.replace(with: Array(s.index.entries.values))
                restored.progress = s.progress
                s = restored
            default:
                let want = Self.naive(s)
                let pass = s.progress.passStartedAt!
                let next = s.index.nextInPass(pass, cursor: s.progress.cursor)
                #expect(next == want.next, "round \(round)")
                let left = s.left()
                #expect(left.files == want.files && left.bytes == want.bytes, "round \(round)")
                if let next {
                    // An arrival between choosing the file and finishing it (sorting before it, after the cursor).
                    if rng.next(4) == 0 { s.index.insert(Self.entry(rng.next(800), size: 7)) }
                    s.index.advancePass(pass, from: s.progress.cursor, to: next)
                    s.progress.cursor = next
                    s.progress.filesDone += 1
                    steps += 1
                } else {
                    s.progress.passStartedAt = nil
                    s.index.endPass()
                }
            }
            let want = Self.naive(s)
            let left = s.left()
            #expect(left.files == want.files, "round \(round): files")
            #expect(s.progress.passStartedAt == nil || left.bytes == want.bytes, "round \(round): bytes")
        }
        #expect(passes >= 3 && steps > 1000, "\(passes) passes, \(steps) steps")
    }

    @Test func dueQueue_takesTheEarliestDue_andARescheduleMovesAName() {
        var q = DueQueue()
        q.schedule("b", at: 5)
        q.schedule("a", at: 3)
        q.schedule("c", at: 9)
        q.schedule("a", at: 7) // moved later
        #expect(q.count == 3 && q.earliest() == 5)
        #expect(q.takeDue(now: 4) == nil)
        #expect(q.takeDue(now: 6) == "b")
        #expect(q.takeDue(now: 6) == nil)
        #expect(q.takeDue(now: 100) == "a" && q.takeDue(now: 100) == "c" && q.takeDue(now: 100) == nil)
        #expect(q.count == 0 && q.earliest() == nil)
    }

    @Test func dueQueue_matchesTheNaiveQueue_underRandomUse() {
        var rng = Rng(s: 42)
        var q = DueQueue()
        var naive: [String: Double] = [:]
        for step in 0..<20_000 {
            let now = Double(step)
            if rng.next(3) != 0 {
                let name = "f\(rng.next(500))", due = now + Double(rng.next(50))
                q.schedule(name, at: due)
                naive[name] = due
            } else {
                let want = naive.filter { $0.value <= now }.min { ($0.value, $0.key) < ($1.value, $1.key) }
                let got = q.takeDue(now: now)
                #expect(got == want?.key, "step \(step)")
                if let got { naive.removeValue(forKey: got) }
            }
            #expect(q.count == naive.count)
        }
    }
}
