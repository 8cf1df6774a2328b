import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Removing a corrupt checkpoint without ever removing a good one.
///
/// A verdict reached while the engine may be writing proves nothing about
/// the header or the trailer, and a name may be re-pointed at a fresh inode
/// by the engine's rename at any moment. So the removal protocol is:
///
/// 1. open the name relative to the directory descriptor, without following
///    links, and require the inode the earlier check examined;
/// 2. take the file's exclusive `flock`: the engine's in-place writers (and
///    our loader) take the same lock, so none is half way through a write and
///    none can start one;
/// 3. verify the whole file again on that descriptor, holding the lock;
/// 4. only if it is still corrupt, and the name still names that inode,
///    `unlinkat` it (or `renameat` it into a quarantine directory), still
///    holding the lock.
///
/// Between the identity check in 4 and the unlink, the engine could rename a
/// new file over the name; Linux has no "unlink if inode" call. The window is
/// two system calls wide, and such a store would re-create a checkpoint the
/// engine can write again; everything else is excluded.
extension CacheDirectory {
    public enum SafeRemovalOutcome: Sendable {
        case removed(VerifyReport)
        case quarantined(VerifyReport, to: String)
        /// With writers excluded the file is not corrupt: it stays.
        case notCorrupt(VerifyReport)
        /// The name now names another inode (or is no regular file): it stays, to be checked afresh.
        case replaced
        case vanished
    }

    public struct Quarantine {
        public let fd: FileDescriptor
        public let path: String
        public init(fd: FileDescriptor, path: String) { self.fd = fd; self.path = path }
    }

    public func removeIfCorrupt(name: String, identity: FileIdentity, verifier: Verifier,
                                lockTimeout: Duration = .seconds(10), quarantine: Quarantine? = nil) throws -> SafeRemovalOutcome {
        guard !name.contains("/"), CheckpointName.isCheckpoint(name) else {
            throw KVCError(.invalidArgument, path: pathOf(name), "refusing to remove a name that is not a checkpoint's")
        }
        let before: FileStatus
        do { before = try FileStatus.of(name: name, in: fd, dirPath: path) } catch let e as KVCError where e.errno == .noSuchFileOrDirectory {
            return .vanished
        }
        guard before.isRegular else { return .replaced }
        let file = try CheckpointFile.open(in: fd, name: name, dirPath: path, flags: O_RDONLY)
        let st = try file.status()
        guard st.isRegular, st.device == identity.device, st.inode == identity.inode else { return .replaced }
        try file.lock(exclusive: true, timeout: lockTimeout)
        defer { file.unlock() }
        var locked = verifier
        locked.options.confirmUnderLock = false // we hold the exclusive lock: this look is the confirmed one
        var report = try locked.verify(file, name: name)
        report.confirmedUnderLock = true
        guard report.verdict == .corrupt else { return .notCorrupt(report) }
        let now: FileStatus
        do { now = try FileStatus.of(name: name, in: fd, dirPath: path) } catch let e as KVCError where e.errno == .noSuchFileOrDirectory {
            return .vanished
        }
        guard now.isRegular, now.device == identity.device, now.inode == identity.inode else { return .replaced }
        if let quarantine {
            guard renameat(fd.rawValue, name, quarantine.fd.rawValue, name) == 0 else {
                throw KVCError.io(Errno(rawValue: errno), path: pathOf(name), "cannot move into quarantine \(quarantine.path)")
            }
            return .quarantined(report, to: quarantine.path + "/" + name)
        }
        guard unlinkat(fd.rawValue, name, 0) == 0 else {
            let e = Errno(rawValue: errno)
            if e == .noSuchFileOrDirectory { return .vanished }
            throw KVCError.io(e, path: pathOf(name), "cannot remove")
        }
        return .removed(report)
    }
}
