import CLinux
import Foundation
import KVCFormat
import SystemPackage
import NIOConcurrencyHelpers
#if canImport(Glibc)
import Glibc
#endif

/// Keeps a scrub from being noticed by the engine: it paces reads to the
/// configured MB/s, and it leaves the page cache as it found it.
///
/// Pacing (`ScrubPacing`): after each chunk the throttle sleeps until the
/// bytes read so far could not have been read faster than the limit. A pause
/// of more than a second restarts the reckoning, so idle time never turns
/// into a burst; and a scrub that fell behind (its thread starved of CPU by a
/// busy machine, a slow disk) may catch up at most 250 ms of its schedule, so
/// slow progress does not turn into one either.
///
/// Readahead: off for the scrub's file (`POSIX_FADV_RANDOM`, which holds for
/// its open file only, not for the engine's). With it, a paced scrub asks the
/// disk for `read_ahead_kb` at a time (8 MiB on the test VM's disk: 3-4 ms of
/// device time every 160 ms at 50 MB/s), and an engine load that meets such a
/// burst waits behind it, idle I/O class or not, since a request already sent
/// to the device is not taken back; without it, each 1 MiB chunk is one read
/// of its own size. (Benchmark, 5,000 loads: p99 ratio 0.78-1.11 over five
/// runs without readahead, 0.95 and 1.34 with; the difference is within this
/// VM's noise, the mechanism is not.)
///
/// Page cache: before the first read of a file, `mincore` says which of its
/// pages are already cached (the engine's, or a file that just arrived).
/// After each chunk, and once more when the file is done, the pages that were
/// not cached then are dropped (`POSIX_FADV_DONTNEED`). The snapshot is taken
/// once per file, not per chunk, because the kernel's readahead for one chunk
/// fills the next chunk's pages before we read them; and the final drop also
/// takes the readahead past the last byte we read. A scrub pass over a cold
/// cache therefore leaves it cold, and the engine's hot pages stay hot.
///
/// Stopping: it checks the stop flag while it sleeps and before each chunk,
/// and throws `ScrubStopped` to abandon the file at once.
final class ScrubThrottle: ReadObserver {
    struct ScrubStopped: Error {}

    private struct Pacing {
        var schedule = ScrubPacing(now: .now)
        var rateWindowStart = ContinuousClock.now
        var rateWindowBytes: UInt64 = 0
    }

    /// Residency of the file being read, one byte per page, taken before its first read.
    private struct Snapshot {
        var fd: Int32
        var device: UInt64
        var inode: UInt64
        var resident: [UInt8]
    }

    let state: DaemonState
    let stopping: StopFlag
    private let pacing = NIOLockedValueBox(Pacing())
    private let snapshot = NIOLockedValueBox<Snapshot?>(nil)
    static let pageSize = UInt64(kvs_page_size())

    init(state: DaemonState, stopping: StopFlag) {
        self.state = state
        self.stopping = stopping
    }

    func willRead(fd: FileDescriptor, offset: UInt64, count: Int) throws {
        if stopping.isSet || state.with({ $0.scrubAbort }) { throw ScrubStopped() }
        // `scrub pause` takes effect mid-file: the read waits here (no I/O) until resumed.
        if state.with({ $0.scrub.paused == true }) {
            // Nothing is read while paused: the rate says so (status, metrics), and the one after the pause
            // is of reading again, not averaged with the wait.
            state.with { $0.scrubRate = 0 }
            while state.with({ $0.scrub.paused == true }) {
                if stopping.isSet || state.with({ $0.scrubAbort }) { throw ScrubStopped() }
                Thread.sleep(forTimeInterval: 0.05)
            }
            pacing.withLockedValue { $0.rateWindowStart = .now; $0.rateWindowBytes = 0 }
        }
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { return }
        let same = snapshot.withLockedValue { s in s.map { $0.fd == fd.rawValue && $0.device == UInt64(st.st_dev) && $0.inode == UInt64(st.st_ino) } ?? false }
        guard !same else { return }
        let size = UInt64(max(0, st.st_size))
        let pages = Int((size + ScrubThrottle.pageSize - 1) / ScrubThrottle.pageSize)
        // No readahead on the scrub's own reads: it would turn each paced chunk into a burst of
        // read_ahead_kb (8 MiB on the test VM's disk), which the engine's reads queue behind.
        _ = posix_fadvise(fd.rawValue, 0, 0, POSIX_FADV_RANDOM)
        var map = [UInt8](repeating: 1, count: max(pages, 1))
        let n = size == 0 ? 0 : map.withUnsafeMutableBufferPointer { kvs_resident_pages(fd.rawValue, 0, size, $0.baseAddress, $0.count) }
        // If mincore cannot tell, assume cached: never drop a page we are not sure we brought in.
        if n <= 0 { map = [UInt8](repeating: 1, count: max(pages, 1)) }
        snapshot.withLockedValue { $0 = Snapshot(fd: fd.rawValue, device: UInt64(st.st_dev), inode: UInt64(st.st_ino), resident: map) }
    }

    func finished(fd: FileDescriptor) {
        let snap = snapshot.withLockedValue { s -> Snapshot? in
            defer { s = nil }
            return s?.fd == fd.rawValue ? s : nil
        }
        if let snap { drop(fd: fd, resident: snap.resident, pages: 0..<snap.resident.count) }
    }

    /// DONTNEED for the runs of pages in `pages` that were not cached before we started.
    private func drop(fd: FileDescriptor, resident: [UInt8], pages: Range<Int>) {
        var i = max(0, pages.lowerBound)
        let end = min(resident.count, pages.upperBound)
        while i < end {
            guard resident[i] & 1 == 0 else { i += 1; continue }
            var j = i
            while j < end && resident[j] & 1 == 0 { j += 1 }
            _ = posix_fadvise(fd.rawValue, off_t(UInt64(i) * ScrubThrottle.pageSize),
                              off_t(UInt64(j - i) * ScrubThrottle.pageSize), POSIX_FADV_DONTNEED)
            i = j
        }
    }

    func didRead(fd: FileDescriptor, offset: UInt64, count: Int) throws {
        if let resident = snapshot.withLockedValue({ $0?.fd == fd.rawValue ? $0?.resident : nil }) {
            let first = Int(offset / ScrubThrottle.pageSize)
            // Whole pages only: a page shared with the next chunk is dropped when that chunk (or the file) is done.
            let last = Int((offset + UInt64(count)) / ScrubThrottle.pageSize)
            drop(fd: fd, resident: resident, pages: first..<last)
        }
        let rateMBps = state.config.scrubRateMBps
        let now = ContinuousClock.now
        let sleepFor: Duration = pacing.withLockedValue { p in
            p.rateWindowBytes += UInt64(count)
            if now - p.rateWindowStart >= .seconds(2) {
                let rate = Double(p.rateWindowBytes) / ((now - p.rateWindowStart) / .seconds(1))
                state.with { $0.scrubRate = rate }
                p.rateWindowStart = now
                p.rateWindowBytes = 0
            }
            return p.schedule.book(UInt64(count), at: now, rateMBps: rateMBps)
        }
        state.with { $0.counters.scrubBytes += UInt64(count) }
        var remaining = sleepFor
        while remaining > .zero {
            if stopping.isSet { throw ScrubStopped() }
            let slice = min(remaining, .milliseconds(100))
            Thread.sleep(forTimeInterval: slice / .seconds(1))
            remaining -= slice
        }
        pacing.withLockedValue { $0.schedule.resumed(at: .now) }
    }
}

/// The throttle's arithmetic, apart from the clock and the sleeping: how long to wait after each
/// chunk so that the bytes read since the reckoning started were not read faster than the limit.
struct ScrubPacing {
    /// How far behind its schedule the scrub may be and still catch up at full speed.
    static let maxCatchUp = Duration.milliseconds(250)
    /// A gap between reads longer than this restarts the reckoning.
    static let restartAfter = Duration.seconds(1)

    private(set) var start: ContinuousClock.Instant
    private(set) var bytes: UInt64 = 0
    private var last: ContinuousClock.Instant

    init(now: ContinuousClock.Instant) {
        start = now
        last = now
    }

    /// Books `count` bytes read at `now`; returns how long to sleep before the next read.
    mutating func book(_ count: UInt64, at now: ContinuousClock.Instant, rateMBps: Double) -> Duration {
        if now - last > Self.restartAfter { start = now; bytes = 0 }
        last = now
        bytes += count
        guard rateMBps > 0 else { return .zero }
        let due = Duration.nanoseconds(Int64(Double(bytes) / (rateMBps * 1e6) * 1e9))
        // Behind schedule: forgive all but `maxCatchUp` of it, or the scrub would read at full
        // speed until it had caught up, far above its limit for as long as it had been slow.
        if now - start > due + Self.maxCatchUp { start = now - due - Self.maxCatchUp }
        let elapsed = now - start
        return due > elapsed ? due - elapsed : .zero
    }

    /// The sleep is over (reading again at `now`): the gap it made is not a pause.
    mutating func resumed(at now: ContinuousClock.Instant) { last = now }
}
