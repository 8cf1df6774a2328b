import CLinux
import Foundation
import KVCFormat
#if canImport(Glibc)
import Glibc
#endif

/// inotify on the cache directory, turned into the few events the index
/// cares about. Blocks in `poll(2)` on the inotify descriptor and an eventfd
/// (to be woken for shutdown), so an idle cache costs no CPU at all.
///
/// Which events: a checkpoint appears by rename (`IN_MOVED_TO`, the engine's
/// store) or by a writer closing it (`IN_CLOSE_WRITE`, also how a touch or a
/// tool-map rewrite ends); it goes by `IN_DELETE` or `IN_MOVED_FROM`.
/// `IN_MODIFY` is not watched: a touch is seen once, at close, with the
/// header complete. `IN_Q_OVERFLOW` means events were lost: rescan.
/// `IN_DELETE_SELF`/`IN_MOVE_SELF`/`IN_IGNORED`: the directory is gone.
///
/// The parent directory is watched too, for the cache directory's own name:
/// while the daemon holds the directory open the kernel keeps its inode, so
/// `IN_DELETE_SELF` may never come; the parent's `IN_DELETE`/`IN_MOVED_FROM`
/// says at once that the name is gone, and `IN_CREATE`/`IN_MOVED_TO` that it is back.
final class DirectoryWatcher: @unchecked Sendable {
    // @unchecked: `inotifyFD` and `watch` are touched only by the one thread
    // that calls `watch`/`next`; `wakeFD` is written from other threads, which
    // the kernel makes safe (an eventfd write is atomic).

    enum Event: Sendable, Equatable {
        case changed(String)
        /// The name is gone: `unlinked` when by unlink (IN_DELETE), not by a rename away.
        case removed(String, unlinked: Bool)
        case overflow
        case directoryGone
        /// The cache directory's name exists again (created or moved in).
        case directoryBack
    }

    private var inotifyFD: Int32 = -1
    private var watch: Int32 = -1
    private var parentWatch: Int32 = -1
    private var baseName = ""
    private let wakeFD: Int32

    init() throws {
        let fd = kvs_eventfd()
        guard fd >= 0 else { throw KVCError(.io, errno: .init(rawValue: -fd), "eventfd failed") }
        wakeFD = fd
    }

    deinit {
        if inotifyFD >= 0 { close(inotifyFD) }
        close(wakeFD)
    }

    /// (Re)starts watching `path`. Call before scanning, so nothing that
    /// happens during the scan is missed (events for files already indexed are harmless).
    func watch(path: String) throws {
        if inotifyFD >= 0 { close(inotifyFD); inotifyFD = -1 }
        inotifyFD = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard inotifyFD >= 0 else { throw KVCError(.io, path: path, errno: .init(rawValue: errno), "inotify_init1 failed") }
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
                          | IN_ONLYDIR | IN_EXCL_UNLINK)
        watch = inotify_add_watch(inotifyFD, path, mask)
        guard watch >= 0 else { throw KVCError(.io, path: path, errno: .init(rawValue: errno), "inotify_add_watch failed") }
        try watchParent(of: path)
    }

    /// Watches only the parent, for the directory's name to come back.
    func watchParentOnly(path: String) throws {
        if inotifyFD >= 0 { close(inotifyFD); inotifyFD = -1 }
        inotifyFD = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard inotifyFD >= 0 else { throw KVCError(.io, path: path, errno: .init(rawValue: errno), "inotify_init1 failed") }
        watch = -1
        try watchParent(of: path)
    }

    private func watchParent(of path: String) throws {
        let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        let parent = (trimmed as NSString).deletingLastPathComponent
        baseName = (trimmed as NSString).lastPathComponent
        parentWatch = inotify_add_watch(inotifyFD, parent.isEmpty ? "/" : parent,
                                        UInt32(IN_DELETE | IN_MOVED_FROM | IN_CREATE | IN_MOVED_TO | IN_ONLYDIR))
        if parentWatch < 0 { parentWatch = -1 } // no parent watch: IN_DELETE_SELF and the timer still apply
    }

    /// Wakes a thread blocked in `next`.
    func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// Waits up to `timeout` (nil: until something happens) and returns the
    /// events that arrived; empty on timeout or wake.
    func next(timeout: Duration?) -> [Event] {
        var fds = [pollfd(fd: inotifyFD, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
        let ms: Int32 = timeout.map { t in Int32(clamping: max(0, t.components.seconds * 1000 + t.components.attoseconds / 1_000_000_000_000_000)) } ?? -1
        let r = poll(&fds, 2, ms)
        guard r > 0 else { return [] }
        if fds[1].revents != 0 {
            var v: UInt64 = 0
            _ = read(wakeFD, &v, 8)
        }
        guard fds[0].revents != 0 else { return [] }
        return drain()
    }

    private func drain() -> [Event] {
        var events: [Event] = []
        let size = 64 * 1024
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
        defer { buf.deallocate() }
        while true {
            let n = read(inotifyFD, buf.baseAddress, size)
            if n <= 0 { break }
            var off = 0
            while off + 16 <= n {
                let wd = buf.load(fromByteOffset: off, as: Int32.self)
                let mask = buf.load(fromByteOffset: off + 4, as: UInt32.self)
                let len = Int(buf.load(fromByteOffset: off + 12, as: UInt32.self))
                var name = ""
                if len > 0 {
                    let bytes = UnsafeRawBufferPointer(rebasing: buf[off + 16..<off + 16 + len])
                    name = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
                }
                off += 16 + len
                if mask & UInt32(IN_Q_OVERFLOW) != 0 { events.append(.overflow); continue }
                if wd == parentWatch && wd != watch {
                    guard name == baseName else { continue }
                    if mask & UInt32(IN_DELETE | IN_MOVED_FROM) != 0 { events.append(.directoryGone) }
                    if mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0 { events.append(.directoryBack) }
                    continue
                }
                if mask & UInt32(IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT) != 0 { events.append(.directoryGone); continue }
                if mask & UInt32(IN_ISDIR) != 0 || name.isEmpty { continue }
                if mask & UInt32(IN_DELETE | IN_MOVED_FROM) != 0 { events.append(.removed(name, unlinked: mask & UInt32(IN_DELETE) != 0)) }
                else if mask & UInt32(IN_CLOSE_WRITE | IN_MOVED_TO) != 0 { events.append(.changed(name)) }
            }
        }
        return events
    }
}
