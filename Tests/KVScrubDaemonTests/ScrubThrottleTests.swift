import CLinux
import Foundation
import Logging
import Testing
@testable import KVCFormat
@testable import KVScrubDaemon
import KVCSimulation
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

@Suite struct ScrubThrottleTests {
    /// The scrubber's state, the settings (at this rate limit) and a recorder, for a throttle of its own.
    static func parts(rateMBps: Double) -> (PartState<ScrubState>, DaemonSettings, EventRecorder) {
        var c = DaemonConfig()
        c.scrubRateMBps = rateMBps
        let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
        return (PartState(ScrubState()), DaemonSettings(config: c), EventRecorder(counts: PartState(CounterState()), clock: SystemClock(), logger: logger))
    }

    func residentPages(_ path: String) -> Int {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        let pages = (Int(st.st_size) + 4095) / 4096 + 2
        var map = [UInt8](repeating: 0, count: pages)
        let n = map.withUnsafeMutableBufferPointer { kvs_resident_pages(fd, 0, UInt64(st.st_size), $0.baseAddress, pages) }
        return n > 0 ? map[0..<n].filter { $0 & 1 != 0 }.count : -1
    }

    func dropCache(_ path: String) {
        let fd = open(path, O_RDONLY)
        fdatasync(fd)
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
        close(fd)
    }

    func makeFile(_ dir: String, seed: UInt64) throws -> String {
        try CheckpointWriter(version: 2).store(
            in: dir, text: Array("throttle \(seed)".utf8),
            payload: SyntheticPayload(byteCount: 8 << 20, tokens: 1, ctxSize: 4096, seed: seed),
            metadata: .init(reason: .cold, modelID: 1, quantBits: 4, ctxSize: 4096, tokens: 1, createdAt: 1))
    }

    @Test func scrubOfAnUncachedFile_leavesItUncached() throws {
        let dir = NSTemporaryDirectory() + "thr-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = try makeFile(dir, seed: 1)
        dropCache(p)
        #expect(residentPages(p) == 0)
        let (state, settings, events) = Self.parts(rateMBps: 0)
        let throttle = ScrubThrottle(state: state, settings: settings, events: events, stopping: StopFlag())
        let r = try Verifier(observer: throttle).verify(path: p)
        #expect(r.verdict == .ok)
        #expect(residentPages(p) == 0, "pages left in cache: \(residentPages(p))")
    }

    @Test func scrubOfACachedFile_leavesItCached() throws {
        let dir = NSTemporaryDirectory() + "thr-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = try makeFile(dir, seed: 2)
        _ = FileManager.default.contents(atPath: p) // the engine just read it
        let cached = residentPages(p)
        #expect(cached > 2000)
        let (state, settings, events) = Self.parts(rateMBps: 0)
        _ = try Verifier(observer: ScrubThrottle(state: state, settings: settings, events: events, stopping: StopFlag())).verify(path: p)
        #expect(residentPages(p) == cached)
    }

    @Test func pagesTheEngineReadsWhileTheScrubIsInTheFile_stayCached() throws {
        // The engine restores a checkpoint while the scrub is part-way through it: the pages the engine
        // read are its own, and the scrub must not drop them when it is done with the file (it did, when it
        // took the file's residency once before its first read: issue #20's restore p99).
        let dir = NSTemporaryDirectory() + "thr-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = try makeFile(dir, seed: 6)
        dropCache(p)
        #expect(residentPages(p) == 0)
        let (state, settings, events) = Self.parts(rateMBps: 0)
        let throttle = ScrubThrottle(state: state, settings: settings, events: events, stopping: StopFlag())
        let scrub = try FileDescriptor.open(p, .readOnly)
        defer { try? scrub.close() }
        let size = UInt64(try scrub.seek(offset: 0, from: .end))
        let chunk = 1 << 20
        var buf = [UInt8](repeating: 0, count: chunk)
        func scrubRead(_ offset: UInt64) throws {
            try throttle.willRead(fd: scrub, offset: offset, count: chunk)
            let n = try buf.withUnsafeMutableBytes { try scrub.read(fromAbsoluteOffset: Int64(offset), into: $0) }
            try throttle.didRead(fd: scrub, offset: offset, count: n)
        }
        try scrubRead(0)
        #expect(residentPages(p) <= 1, "the scrub's first MiB is gone once passed")
        // The engine reads 2 MiB further on, with its own descriptor (and the kernel's readahead).
        let engine = open(p, O_RDONLY)
        defer { close(engine) }
        var ebuf = [UInt8](repeating: 0, count: 2 << 20)
        #expect(pread(engine, &ebuf, ebuf.count, 4 << 20) == ebuf.count)
        let engines = residentPages(p)
        #expect(engines >= 512, "the engine's 2 MiB are cached: \(engines) pages")
        var offset = UInt64(chunk)
        while offset < size { try scrubRead(offset); offset += UInt64(chunk) }
        throttle.finished(fd: scrub)
        #expect(residentPages(p) == engines, "the engine's pages stay, the scrub's go")
    }

    @Test func throttle_pacesReadsToTheLimit() throws {
        let dir = NSTemporaryDirectory() + "thr-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = try makeFile(dir, seed: 3)
        let (state, settings, events) = Self.parts(rateMBps: 20)
        let t0 = ContinuousClock.now
        _ = try Verifier(observer: ScrubThrottle(state: state, settings: settings, events: events, stopping: StopFlag())).verify(path: p)
        let took = ContinuousClock.now - t0
        // 8.4 MB at 20 MB/s: 0.42 s.
        #expect(took >= .milliseconds(380), "\(took)")
        #expect(took <= .milliseconds(900), "\(took)")
    }

    @Test func stopFlag_abandonsAReadAtOnce() throws {
        let dir = NSTemporaryDirectory() + "thr-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = try makeFile(dir, seed: 4)
        let (state, settings, events) = Self.parts(rateMBps: 1)
        let stop = StopFlag()
        // A thread of its own: under a loaded suite the global queue can start a block late,
        // and the test would then time the queue, not the throttle.
        Thread { Thread.sleep(forTimeInterval: 0.3); stop.set() }.start()
        let t0 = ContinuousClock.now
        #expect(throws: ScrubThrottle.ScrubStopped.self) {
            try Verifier(observer: ScrubThrottle(state: state, settings: settings, events: events, stopping: stop)).verify(path: p)
        }
        #expect(ContinuousClock.now - t0 < .seconds(1))
    }

    /// Simulated time, no sleeping: reads of `chunk` bytes, each taking `readTime`, each followed by the
    /// sleep `ScrubPacing` asks for; returns the bytes read within `window` from `from`.
    static func simulate(_ pacing: inout ScrubPacing, from: ContinuousClock.Instant, for window: Duration, chunk: UInt64,
                         readTime: Duration, rate: Double) -> (bytes: UInt64, end: ContinuousClock.Instant) {
        var now = from, bytes: UInt64 = 0
        while now - from < window {
            now += readTime
            bytes += chunk
            now += pacing.book(chunk, at: now, rateMBps: rate)
            pacing.resumed(at: now)
        }
        return (bytes, now)
    }

    @Test func pacing_holdsTheRate_andASlowStretchDoesNotTurnIntoABurst() {
        let t0 = ContinuousClock.now, chunk: UInt64 = 1 << 20
        var p = ScrubPacing(now: t0)
        // Reads that cost nothing: paced to the limit, 20 MB/s, within a chunk.
        let fast = Self.simulate(&p, from: t0, for: .seconds(10), chunk: chunk, readTime: .zero, rate: 20)
        #expect(abs(Double(fast.bytes) / 10 - 20e6) <= Double(chunk), "\(fast.bytes)")
        // Five seconds at 5 MB/s (a starved thread, a slow disk), each read 200 ms: no sleeping asked for.
        let slow = Self.simulate(&p, from: fast.end, for: .seconds(5), chunk: chunk, readTime: .milliseconds(200), rate: 20)
        #expect(slow.bytes <= 26 * chunk)
        // Fast again: the first second reads at most the limit plus the catch-up allowance (250 ms of it)
        // and a chunk, not the 75 MB the slow stretch fell behind.
        let after = Self.simulate(&p, from: slow.end, for: .seconds(1), chunk: chunk, readTime: .zero, rate: 20)
        #expect(Double(after.bytes) <= 20e6 * 1.25 + Double(chunk), "\(Double(after.bytes) / 1e6) MB in the second after a slow stretch")
        #expect(Double(after.bytes) >= 20e6 - Double(chunk), "and the limit is still reached: \(Double(after.bytes) / 1e6) MB")
        // A pause of more than a second starts afresh: no burst either.
        var q = ScrubPacing(now: t0)
        _ = q.book(chunk, at: t0, rateMBps: 20)
        let resumed = Self.simulate(&q, from: t0 + .seconds(30), for: .seconds(1), chunk: chunk, readTime: .zero, rate: 20)
        #expect(Double(resumed.bytes) <= 20e6 + 2 * Double(chunk), "\(resumed.bytes)")
    }

    @Test func aPauseMidFile_showsARateOfZero_untilReadingResumes() throws {
        // A pause reached inside a file waits in the throttle, not in the scrub loop (which zeroes the
        // rate when idle): the rate must read 0 there too, not the last figure before the pause.
        let dir = NSTemporaryDirectory() + "thr-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let p = try makeFile(dir, seed: 5)
        let (state, settings, events) = Self.parts(rateMBps: DaemonConfig().scrubRateMBps)
        state.change { $0.rate = 50e6; $0.progress.paused = true }
        let throttle = ScrubThrottle(state: state, settings: settings, events: events, stopping: StopFlag())
        let fd = try FileDescriptor.open(p, .readOnly)
        defer { try? fd.close() }
        let returned = DispatchSemaphore(value: 0)
        Thread { try? throttle.willRead(fd: fd, offset: 0, count: 4096); returned.signal() }.start()
        let deadline = ContinuousClock.now + .seconds(5)
        while state.read({ $0.rate }) != 0 && ContinuousClock.now < deadline { usleep(1000) }
        #expect(state.read { $0.rate } == 0, "the rate while paused")
        #expect(returned.wait(timeout: .now() + 0.2) == .timedOut, "still waiting while paused")
        state.change { $0.progress.paused = false }
        #expect(returned.wait(timeout: .now() + 5) == .success, "reading resumes once unpaused")
    }
}
