import CLinux
import Foundation
import KVCFormat
import SystemPackage
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Keeps a scrub from being noticed by the engine: it paces reads to the
/// configured MB/s, and it leaves the page cache as it found it.
///
/// Pacing: after each chunk the throttle sleeps until the bytes read so far
/// could not have been read faster than the limit. A pause of more than a
/// second restarts the reckoning, so idle time never turns into a burst.
///
/// Page cache: before a chunk is read, `mincore` says which of its pages
/// are already cached (the engine's, or a file that just arrived); after the
/// read, only the pages that were not are dropped (`POSIX_FADV_DONTNEED`).
/// A scrub pass over a cold cache therefore leaves it cold, and the engine's
/// hot pages stay hot.
///
/// Stopping: it checks the stop flag while it sleeps and before each chunk,
/// and throws `ScrubStopped` to abandon the file at once.
final class ScrubThrottle: ReadObserver {
    struct ScrubStopped: Error {}

    private struct Pacing {
        var start = ContinuousClock.now
        var bytes: UInt64 = 0
        var last = ContinuousClock.now
        var resident: [UInt8] = []
        var residentOffset: UInt64 = 0
        var rateWindowStart = ContinuousClock.now
        var rateWindowBytes: UInt64 = 0
    }

    let state: DaemonState
    let stopping: StopFlag
    private let pacing = Mutex(Pacing())
    static let pageSize = UInt64(kvs_page_size())

    init(state: DaemonState, stopping: StopFlag) {
        self.state = state
        self.stopping = stopping
    }

    func willRead(fd: FileDescriptor, offset: UInt64, count: Int) throws {
        if stopping.isSet { throw ScrubStopped() }
        let pages = Int((UInt64(count) + 2 * ScrubThrottle.pageSize - 1) / ScrubThrottle.pageSize) + 1
        var map = [UInt8](repeating: 1, count: pages)
        let n = map.withUnsafeMutableBufferPointer { kvs_resident_pages(fd.rawValue, offset, UInt64(count), $0.baseAddress, pages) }
        // If mincore cannot tell, assume cached: never drop a page we are not sure we brought in.
        pacing.withLock {
            $0.resident = n > 0 ? Array(map[0..<n]) : []
            $0.residentOffset = offset - offset % ScrubThrottle.pageSize
        }
    }

    func didRead(fd: FileDescriptor, offset: UInt64, count: Int) throws {
        let (resident, base) = pacing.withLock { ($0.resident, $0.residentOffset) }
        // Drop the runs of pages this read brought in.
        var i = 0
        while i < resident.count {
            guard resident[i] & 1 == 0 else { i += 1; continue }
            var j = i
            while j < resident.count && resident[j] & 1 == 0 { j += 1 }
            _ = posix_fadvise(fd.rawValue, off_t(base + UInt64(i) * ScrubThrottle.pageSize),
                              off_t(UInt64(j - i) * ScrubThrottle.pageSize), POSIX_FADV_DONTNEED)
            i = j
        }
        let rateMBps = state.config.scrubRateMBps
        let now = ContinuousClock.now
        let sleepFor: Duration = pacing.withLock { p in
            if now - p.last > .seconds(1) { p.start = now; p.bytes = 0 }
            p.last = now
            p.bytes += UInt64(count)
            p.rateWindowBytes += UInt64(count)
            if now - p.rateWindowStart >= .seconds(2) {
                let secs = Double((now - p.rateWindowStart).components.attoseconds) / 1e18 + Double((now - p.rateWindowStart).components.seconds)
                let rate = Double(p.rateWindowBytes) / secs
                state.with { $0.scrubRate = rate }
                p.rateWindowStart = now
                p.rateWindowBytes = 0
            }
            guard rateMBps > 0 else { return .zero }
            let due = Duration.nanoseconds(Int64(Double(p.bytes) / (rateMBps * 1e6) * 1e9))
            let elapsed = now - p.start
            return due > elapsed ? due - elapsed : .zero
        }
        state.with { $0.counters.scrubBytes += UInt64(count) }
        var remaining = sleepFor
        while remaining > .zero {
            if stopping.isSet { throw ScrubStopped() }
            let slice = min(remaining, .milliseconds(100))
            Thread.sleep(forTimeInterval: Double(slice.components.attoseconds) / 1e18 + Double(slice.components.seconds))
            remaining -= slice
        }
        pacing.withLock { $0.last = ContinuousClock.now }
    }
}
