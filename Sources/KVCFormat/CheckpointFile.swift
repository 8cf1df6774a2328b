import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The one place this module makes file system calls. Every call is wrapped
/// once here: EINTR retried (swift-system does it), short reads and writes
/// completed, and every failure turned into a `KVCError` naming the path and
/// the operation, so the rest of the module never looks at `errno`.
struct CheckpointFile: ~Copyable {
    let fd: FileDescriptor
    let path: String

    init(adopting fd: FileDescriptor, path: String) {
        self.fd = fd
        self.path = path
    }

    /// Opens without following a final symlink: a checkpoint is a regular
    /// file, and a link in the cache directory must never lead us outside it.
    static func open(_ path: String, _ mode: FileDescriptor.AccessMode,
                     extra: FileDescriptor.OpenOptions = [],
                     permissions: FilePermissions? = nil) throws -> CheckpointFile {
        do {
            let fd = try FileDescriptor.open(
                FilePath(path), mode, options: extra.union([.closeOnExec, .noFollow]), permissions: permissions)
            return CheckpointFile(adopting: fd, path: path)
        } catch let e as Errno {
            throw KVCError.io(e, path: path, "cannot open")
        }
    }

    /// Opens `name` relative to an open directory, so the file is the one in
    /// that directory even if the directory's path is replaced meanwhile.
    /// A created file gets 0666 less the umask, as the engine's `fopen` gives it.
    static func open(in dir: FileDescriptor, name: String, dirPath: String, flags: Int32) throws -> CheckpointFile {
        let path = dirPath.hasSuffix("/") ? dirPath + name : dirPath + "/" + name
        while true {
            let fd = openat(dir.rawValue, name, flags | O_CLOEXEC | O_NOFOLLOW, 0o666)
            if fd >= 0 { return CheckpointFile(adopting: FileDescriptor(rawValue: fd), path: path) }
            let e = Errno(rawValue: errno)
            if e == .interrupted { continue }
            throw KVCError.io(e, path: path, "cannot open")
        }
    }

    deinit { try? fd.close() }

    func status() throws -> FileStatus {
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { throw KVCError.io(Errno(rawValue: errno), path: path, "cannot stat") }
        return FileStatus(st)
    }

    var size: UInt64 {
        get throws { try status().size }
    }

    /// Reads until `buffer` is full or the file ends; returns how many bytes were read.
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n: Int
            do {
                n = try fd.read(fromAbsoluteOffset: Int64(offset) + Int64(done),
                                into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            } catch let e as Errno {
                throw KVCError.io(e, path: path, "read failed at offset \(offset + UInt64(done))")
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    func read(at offset: UInt64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let n = try out.withUnsafeMutableBytes { try read(at: offset, into: $0) }
        out.removeLast(count - n)
        return out
    }

    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < bytes.count {
            do {
                done += try fd.write(toAbsoluteOffset: Int64(offset) + Int64(done),
                                     UnsafeRawBufferPointer(rebasing: bytes[done...]))
            } catch let e as Errno {
                throw KVCError.io(e, path: path, "write failed at offset \(offset + UInt64(done))")
            }
        }
    }

    func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }

    func truncate(to size: UInt64) throws {
        do { try fd.resize(to: Int64(size)) } catch let e as Errno {
            throw KVCError.io(e, path: path, "cannot truncate to \(size) bytes")
        }
    }

    func sync() throws {
        guard fsync(fd.rawValue) == 0 else { throw KVCError.io(Errno(rawValue: errno), path: path, "fsync failed") }
    }

    /// Drops the file's pages from the page cache (`POSIX_FADV_DONTNEED`).
    func dropCache(offset: UInt64, length: UInt64) {
        _ = posix_fadvise(fd.rawValue, off_t(offset), off_t(length), POSIX_FADV_DONTNEED)
    }
}

/// What a reader can observe of a file without any cooperation from its
/// writers: which inode, how long, and when its data (mtime) and inode
/// (ctime) last changed. Equal stamps before the first byte and after the
/// last byte of a read mean no write, truncate or rename touched the file
/// meanwhile (kvc-format.md revision 2, "Removing a file as corrupt").
public struct FileStamp: Sendable, Equatable, Hashable, Codable {
    public var identity: FileIdentity
    public var size: UInt64
    public var modifiedAtNanos: Int64
    public var changedAtNanos: Int64

    /// The last time the file changed in any way, in Unix seconds.
    public var lastChange: Double { Double(max(modifiedAtNanos, changedAtNanos)) / 1e9 }
}

/// The parts of `stat` the format module and the daemon act on.
public struct FileStatus: Sendable, Equatable {
    public var size: UInt64
    public var device: UInt64
    public var inode: UInt64
    public var isRegular: Bool
    public var isSymlink: Bool
    public var isDirectory: Bool
    public var isSocket: Bool
    public var modifiedAt: Int64
    /// mtime and ctime in nanoseconds: an in-place write moves both.
    public var modifiedAtNanos: Int64
    public var changedAtNanos: Int64

    init(_ st: stat) {
        size = UInt64(max(0, st.st_size))
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        let fmt = st.st_mode & S_IFMT
        isRegular = fmt == S_IFREG
        isSymlink = fmt == S_IFLNK
        isDirectory = fmt == S_IFDIR
        isSocket = fmt == S_IFSOCK
        modifiedAt = Int64(st.st_mtim.tv_sec)
        modifiedAtNanos = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        changedAtNanos = Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec)
    }

    public var identity: FileIdentity { FileIdentity(device: device, inode: inode) }

    /// What the removal rule compares: identity, size and both times.
    public var stamp: FileStamp {
        FileStamp(identity: identity, size: size, modifiedAtNanos: modifiedAtNanos, changedAtNanos: changedAtNanos)
    }

    /// `lstat` of a path: what is there, without following a final link.
    public static func of(path: String) throws -> FileStatus {
        var st = stat()
        guard lstat(path, &st) == 0 else { throw KVCError.io(Errno(rawValue: errno), path: path, "cannot stat") }
        return FileStatus(st)
    }

    /// `fstatat(AT_SYMLINK_NOFOLLOW)` of a name in an open directory.
    public static func of(name: String, in dir: FileDescriptor, dirPath: String) throws -> FileStatus {
        var st = stat()
        guard fstatat(dir.rawValue, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw KVCError.io(Errno(rawValue: errno), path: dirPath + "/" + name, "cannot stat")
        }
        return FileStatus(st)
    }
}
