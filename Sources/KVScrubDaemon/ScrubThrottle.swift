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
/// Pacing: after each chunk the throttle sleeps until the bytes read so far
/// could not have been read faster than the limit. A pause of more than a
/// second restarts the reckoning, so idle time never turns into a burst.
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
        var start = ContinuousClock.now
        var bytes: UInt64 = 0
        var last = ContinuousClock.now
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
        while state.with({ $0.scrub.paused == true }) {
            if stopping.isSet || state.with({ $0.scrubAbort }) { throw ScrubStopped() }
            Thread.sleep(forTimeInterval: 0.05)
        }
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { return }
        let same = snapshot.withLockedValue { s in s.map { $0.fd == fd.rawValue && $0.device == UInt64(st.st_dev) && $0.inode == UInt64(st.st_ino) } ?? false }
        guard !same else { return }
        let size = UInt64(max(0, st.st_size))
        let pages = Int((size + ScrubThrottle.pageSize - 1) / ScrubThrottle.pageSize)
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
        pacing.withLockedValue { $0.last = ContinuousClock.now }
    }
}
