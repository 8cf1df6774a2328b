import Dispatch
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A verified load faster than the engine's unverified one: two threads read
/// alternate pieces of the payload into the caller's buffer, each checksums
/// the pieces it read while they are still in its core's cache, and the
/// pieces' CRCs are folded into the payload's at the end (`CRC32C.combine`).
///
/// Why: a load is the kernel copying page-cache pages into the engine's buffer
/// (about 8-9 GB/s here, slower than a whole-file read because the payload's
/// file offset, 68 + text bytes, and the buffer are not aligned alike), plus
/// the CRC over every byte (ISA-L, about 25 GB/s). One thread doing both
/// takes their sum, about 1.4 times the read alone. A checker thread trailing
/// the reader (measured first) overlaps the CRC but competes for the copy's
/// memory and still leaves the copy on one core: 1.06-1.14 times. Splitting
/// the copy itself over two cores, each CRC'ing its own pieces from cache,
/// is what gets under the unverified read. The result is the same CRC over
/// the same bytes; nothing is handed over before both threads are done.
///
/// Used for payloads of `minimumBytes` or more on machines with more than one
/// CPU, when nobody observes the reads (the scrub's throttle does; loads do not).
enum StripedRead {
    static let minimumBytes = 8 << 20
    static var worthIt: Bool { sysconf(Int32(_SC_NPROCESSORS_ONLN)) > 1 }

    /// Reads `destination.count` bytes of the file at `offset` into `destination`, in
    /// pieces of `piece` bytes; returns their CRC32C. Throws `.io` on a read error or
    /// when the file ends first (it shrank under us).
    static func read(fd: FileDescriptor, path: String, from offset: UInt64, into destination: UnsafeMutableRawBufferPointer,
                     piece: Int) throws -> UInt32 {
        let job = Job(fd: fd.rawValue, path: path, offset: offset, destination: destination, piece: piece)
        defer { job.crcs.deallocate() }
        let helperDone = DispatchSemaphore(value: 0)
        DispatchQueue.global(qos: .userInitiated).async {
            job.run(stripe: 1)
            helperDone.signal()
        }
        job.run(stripe: 0)
        helperDone.wait()
        if let e = job.failure.withLock({ $0 }) { throw e }
        var crc = job.crcs[0]
        let whole = CRC32C.ZerosOperator(bytes: piece)
        for i in 1..<job.pieces {
            let length = min(piece, destination.count - i * piece)
            crc = (length == piece ? whole : CRC32C.ZerosOperator(bytes: length)).apply(crc) ^ job.crcs[i]
        }
        return crc
    }

    final class Job: @unchecked Sendable {
        // Why @unchecked Sendable holds: everything but `crcs`' elements, the
        // destination's bytes and `failure` is immutable. Piece i (its bytes in
        // the destination and crcs[i]) is written only by the thread whose stripe
        // is i % 2, and read by the caller only after both threads are done (the
        // semaphore orders it). `failure` and `stop` are a mutex and an atomic.
        let fd: Int32
        let path: String
        let offset: UInt64
        let base: UnsafeMutableRawPointer
        let count: Int
        let piece: Int
        let pieces: Int
        let crcs: UnsafeMutableBufferPointer<UInt32>
        let failure = Mutex<KVCError?>(nil)
        let stop = Atomic<Bool>(false)

        init(fd: Int32, path: String, offset: UInt64, destination: UnsafeMutableRawBufferPointer, piece: Int) {
            self.fd = fd
            self.path = path
            self.offset = offset
            base = destination.baseAddress!
            count = destination.count
            self.piece = piece
            pieces = (destination.count + piece - 1) / piece
            crcs = .allocate(capacity: pieces)
            crcs.initialize(repeating: 0)
        }

        func run(stripe: Int) {
            var i = stripe
            while i < pieces && !stop.load(ordering: .relaxed) {
                let start = i * piece
                let length = min(piece, count - start)
                var done = 0
                while done < length {
                    let n = pread(fd, base + start + done, length - done, off_t(offset + UInt64(start + done)))
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else {
                        let at = offset + UInt64(start + done)
                        let e = n < 0 ? KVCError.io(Errno(rawValue: errno), path: path, "read failed at offset \(at)")
                                      : KVCError(.io, path: path, "file ended while reading at \(at)")
                        failure.withLock { if $0 == nil { $0 = e } }
                        stop.store(true, ordering: .relaxed)
                        return
                    }
                    done += n
                }
                crcs[i] = CRC32C.checksum(UnsafeRawBufferPointer(start: base + start, count: length))
                i += 2
            }
        }
    }
}
