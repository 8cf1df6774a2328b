import CLinux
import Foundation
import KVCFormat
import NIOConcurrencyHelpers
import SystemPackage
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
/// Page cache: it drops exactly the pages its own reads brought in, and as
/// soon as the scan has passed them. Just before each read, `mincore` says
/// which pages of that span are cached; the ones that are not are the scrub's
/// once it has read them. With readahead off, a read brings in only its own
/// span, so that answer is exact. After each read, the scrub's pages wholly
/// before the read's end are dropped (`POSIX_FADV_DONTNEED`); a page shared
/// with the next read waits for it, and whatever is left goes when the file is
/// done. A scrub pass over a cold cache therefore leaves it cold, and the
/// engine's pages stay: those cached before the scrub came, and also those the
/// engine reads while the scrub is elsewhere in the same file.
///
/// An earlier version took the residency once per file and dropped every page
/// not cached then. A restore of that file by the engine during the scrub's
/// read of it (100 ms for a 5 MB checkpoint at 50 MB/s) lost its freshly read
/// pages when the scrub finished, and the engine's next restore of it went to
/// the disk.
/// What remains is the span of one read, between its `mincore` and the read
/// itself: a page the engine brings in within that millisecond is taken for
/// the scrub's and dropped; the engine reads it again from the disk.
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

    /// The file being read, and the pages of it the scrub's reads brought into the cache and has not
    /// dropped yet (page indexes, ascending: the reads are sequential).
    private struct Reading {
        var fd: Int32
        var device: UInt64
        var inode: UInt64
        var size: UInt64
        var ours: [Int] = []
    }

    /// The scrubber's state: pause and cancel are read from it, the rate is written to it.
    let state: PartState<ScrubState>
    let settings: DaemonSettings
    let events: EventRecorder
    let stopping: StopFlag
    private let pacing = NIOLockedValueBox(Pacing())
    private let reading = NIOLockedValueBox<Reading?>(nil)
    static let pageSize = UInt64(kvs_page_size())

    init(state: PartState<ScrubState>, settings: DaemonSettings, events: EventRecorder, stopping: StopFlag) {
        self.state = state
        self.settings = settings
        self.events = events
        self.stopping = stopping
    }

    func willRead(fd: FileDescriptor, offset: UInt64, count: Int) throws {
        if stopping.isSet || state.read({ $0.abort }) { throw ScrubStopped() }
        // `scrub pause` takes effect mid-file: the read waits here (no I/O) until resumed.
        if state.read({ $0.progress.paused == true }) {
            // Nothing is read while paused: the rate says so (status, metrics), and the one after the pause
            // is of reading again, not averaged with the wait.
            state.change { $0.rate = 0 }
            while state.read({ $0.progress.paused == true }) {
                if stopping.isSet || state.read({ $0.abort }) { throw ScrubStopped() }
                Thread.sleep(forTimeInterval: 0.05)
            }
            pacing.withLockedValue { $0.rateWindowStart = .now; $0.rateWindowBytes = 0 }
        }
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0, count > 0 else { return }
        let size = UInt64(max(0, st.st_size))
        let same = reading.withLockedValue { r in r.map { $0.fd == fd.rawValue && $0.device == UInt64(st.st_dev) && $0.inode == UInt64(st.st_ino) } ?? false }
        if !same {
            // No readahead on the scrub's own reads: it would turn each paced chunk into a burst of
            // read_ahead_kb (8 MiB on the test VM's disk), which the engine's reads queue behind; and it
            // lets the residency below say exactly which pages the read brings in.
            _ = posix_fadvise(fd.rawValue, 0, 0, POSIX_FADV_RANDOM)
            reading.withLockedValue { $0 = Reading(fd: fd.rawValue, device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: size) }
        }
        guard offset < size else { return }
        let length = min(UInt64(count), size - offset)
        let page = ScrubThrottle.pageSize
        let first = Int(offset / page)
        let pages = Int((offset + length + page - 1) / page) - first
        var map = [UInt8](repeating: 1, count: pages)
        let n = map.withUnsafeMutableBufferPointer { kvs_resident_pages(fd.rawValue, offset, length, $0.baseAddress, $0.count) }
        // If mincore cannot tell, assume cached: never drop a page we are not sure we brought in.
        guard n == pages else { return }
        // In place (through `r!`): a copy taken out and stored back would copy the array at every append.
        reading.withLockedValue { r in
            guard r?.fd == fd.rawValue else { return }
            for (i, bits) in map.enumerated() where bits & 1 == 0 {
                let index = first + i
                if r!.ours.last.map({ $0 < index }) ?? true { r!.ours.append(index) }
                else if !r!.ours.contains(index) { r!.ours.append(index); r!.ours.sort() }
            }
        }
    }

    func finished(fd: FileDescriptor) {
        let ours = reading.withLockedValue { r -> [Int] in
            defer { r = nil }
            return r?.fd == fd.rawValue ? r!.ours : []
        }
        drop(fd: fd, pages: ours)
    }

    /// DONTNEED for `pages` (ascending), a call per run of consecutive pages.
    private func drop(fd: FileDescriptor, pages: [Int]) {
        var i = 0
        while i < pages.count {
            var j = i + 1
            while j < pages.count && pages[j] == pages[j - 1] + 1 { j += 1 }
            _ = posix_fadvise(fd.rawValue, off_t(UInt64(pages[i]) * ScrubThrottle.pageSize),
                              off_t(UInt64(j - i) * ScrubThrottle.pageSize), POSIX_FADV_DONTNEED)
            i = j
        }
    }

    func didRead(fd: FileDescriptor, offset: UInt64, count: Int) throws {
        // The scrub's pages wholly before this read's end (or all of them at the end of the file) go now;
        // a page shared with the next read stays until that read is done.
        let passed = reading.withLockedValue { r -> [Int] in
            guard let size = r?.size, r?.fd == fd.rawValue else { return [] }
            let end = offset + UInt64(count)
            let limit = end >= size ? Int.max : Int(end / ScrubThrottle.pageSize)
            let split = r!.ours.firstIndex { $0 >= limit } ?? r!.ours.count
            let gone = Array(r!.ours[..<split])
            r!.ours.removeFirst(split)
            return gone
        }
        drop(fd: fd, pages: passed)
        let rateMBps = settings.setting(\.scrubRateMBps)
        let now = ContinuousClock.now
        let sleepFor: Duration = pacing.withLockedValue { p in
            p.rateWindowBytes += UInt64(count)
            if now - p.rateWindowStart >= .seconds(2) {
                let rate = Double(p.rateWindowBytes) / ((now - p.rateWindowStart) / .seconds(1))
                state.change { $0.rate = rate }
                p.rateWindowStart = now
                p.rateWindowBytes = 0
            }
            return p.schedule.book(UInt64(count), at: now, rateMBps: rateMBps)
        }
        events.scrubbed(bytes: UInt64(count))
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
