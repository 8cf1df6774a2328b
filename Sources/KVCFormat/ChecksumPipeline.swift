import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A verified load at the speed of an unverified one: the payload's CRC32C
/// is computed on a second core while the next chunk is being read.
///
/// Why: a load copies the payload from the page cache into the engine's
/// buffer (about 11 GB/s here) and must CRC every byte of it (ISA-L, about
/// 25 GB/s). Done one after the other, chunk by chunk, the check adds about
/// half again to the load; engines restore a checkpoint while a user waits.
/// The two are independent except for order: a chunk can be checked once it
/// has arrived. So the reader publishes how far the buffer is filled and a
/// checker thread follows it, and the load costs the larger of the two, not
/// their sum. The result is the same CRC, over the same bytes, in the same
/// order; nothing is handed over before the checker has finished.
///
/// Used for payloads of `minimumBytes` or more on machines with more than
/// one CPU; below that, starting a thread costs more than it saves.
final class ChecksumPipeline: @unchecked Sendable {
    // Why @unchecked Sendable holds: `base` and `count` never change. The bytes
    // [0, published) are written by the reader before it publishes them (a
    // releasing store, then the semaphore) and not written again during the
    // load; the checker reads only bytes it saw published (an acquiring load).
    // `crc` is touched only by the checker until it signals `finished`, and read
    // by the reader only after waiting on `finished`. The flags are atomics.
    private let base: UnsafeRawPointer
    private let count: Int
    private let published = Atomic<Int>(0)
    private let abandoned = Atomic<Bool>(false)
    private let arrived = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private var crc = CRC32C()

    static let minimumBytes = 8 << 20
    static var worthIt: Bool { sysconf(Int32(_SC_NPROCESSORS_ONLN)) > 1 }

    /// Starts the checker over `buffer`, which must outlive `result()` or `abandon()`.
    init(checking buffer: UnsafeRawBufferPointer) {
        base = buffer.baseAddress!
        count = buffer.count
        DispatchQueue.global(qos: .userInitiated).async { self.check() }
    }

    /// The reader has filled [0, end).
    func publish(upTo end: Int) {
        published.store(end, ordering: .releasing)
        arrived.signal()
    }

    /// The CRC32C of the whole buffer, once every byte was published.
    func result() -> UInt32 {
        finished.wait()
        return crc.value
    }

    /// The load failed: stop the checker and wait until it no longer reads the buffer.
    func abandon() {
        abandoned.store(true, ordering: .releasing)
        arrived.signal()
        finished.wait()
    }

    private func check() {
        var done = 0
        while done < count {
            arrived.wait()
            if abandoned.load(ordering: .acquiring) { break }
            let end = published.load(ordering: .acquiring)
            if end > done {
                crc.update(UnsafeRawBufferPointer(start: base + done, count: end - done))
                done = end
            }
        }
        finished.signal()
    }
}
