import Foundation
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A cache directory held open by descriptor. Every file operation is made
/// relative to that descriptor (`openat`, `fstatat`, `unlinkat`), so nothing
/// here can reach outside the directory: names with a `/` are refused, and
/// links are never followed.
public final class CacheDirectory: Sendable {
    public let path: String
    public let fd: FileDescriptor

    public init(path: String) throws {
        self.path = path
        let raw = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard raw >= 0 else { throw KVCError.io(Errno(rawValue: errno), path: path, "cannot open cache directory") }
        fd = FileDescriptor(rawValue: raw)
    }

    deinit { try? fd.close() }

    public func pathOf(_ name: String) -> String { path.hasSuffix("/") ? path + name : path + "/" + name }

    /// The names in the directory, sorted, without `.` and `..`.
    public func names() throws -> [String] {
        try listing().map(\.name).sorted()
    }

    /// The directory's entries in the order the file system gives them, each with
    /// the type `readdir` reports (`d_type`: `DT_REG`, `DT_FIFO`, ..., or `DT_UNKNOWN`
    /// on a file system that does not say), without `.` and `..`.
    func listing() throws -> [(name: String, type: UInt8)] {
        let dupFD = dup(fd.rawValue)
        guard dupFD >= 0, let dir = fdopendir(dupFD) else {
            throw KVCError.io(Errno(rawValue: errno), path: path, "cannot list directory")
        }
        defer { closedir(dir) }
        rewinddir(dir)
        var out: [(name: String, type: UInt8)] = []
        // The name is read in place, up to its NUL: a record `readdir` returns is only as long as its
        // name needs (`d_reclen`), so copying the whole 256-byte `d_name` field out of it read past the
        // end of the kernel's buffer at the last record (AddressSanitizer, a directory of 5,000 names).
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        while let ent = readdir(dir) {
            let name = String(cString: UnsafeRawPointer(ent).advanced(by: nameOffset).assumingMemoryBound(to: CChar.self))
            if name != "." && name != ".." { out.append((name, ent.pointee.d_type)) }
        }
        return out
    }

    public struct Scan: Sendable {
        public var entries: [CacheEntry] = []
        /// Directory entries that are not checkpoints, with the reason.
        public var ignored: [(name: String, reason: String)] = []
        /// Checkpoints that could not be read (permission, I/O), with the error. Each is
        /// also in `entries`, unusable, with its `stat` size: it still takes space.
        public var errors: [KVCError] = []
        /// kvscrubd's private names (`CheckpointName.takenAwayName`): removals a crash interrupted.
        public var takenAway: [String] = []
        /// The engine generation the entries were judged against.
        public var engineABI: EngineABI.Resolution = .init(generation: nil, source: "none yet")
    }

    /// Reads every checkpoint's prologue: the start-up scan. Text and payload
    /// are not touched. With `.auto`, the ABI in force is learned from the
    /// headers read, then every entry is judged against it.
    ///
    /// Cost: at 100,000 files the scan is most of the daemon's start-up, so a name
    /// `readdir` says is a regular file is opened without an `fstatat` first (the
    /// open's own `fstat` confirms it), and the names are not sorted.
    public func scan(engineABI: GenerationSetting = .auto) throws -> Scan {
        let listed = try listing()
        // A large directory is read by a few threads at once, each over its share of the names: the
        // reads are of headers in the page cache (or on an SSD's queue), so two cores read them in
        // about half the time (100,000 files: 1.13 s on one thread, the C header-read loop 0.57 s).
        let workers = listed.count >= Self.parallelScanFiles ? max(1, min(4, ProcessInfo.processInfo.activeProcessorCount)) : 1
        var s = Scan()
        if workers == 1 {
            s = try scan(listed[...])
        } else {
            let share = (listed.count + workers - 1) / workers
            // Each worker fills a slot of its own, read once `concurrentPerform` has returned (all done):
            // no two threads ever share a slot, so ThreadSanitizer follows it through the join alone.
            let slots = (0..<workers).map { _ in ScanSlot() }
            DispatchQueue.concurrentPerform(iterations: workers) { w in
                let part = Result { try scan(listed[min(listed.count, w * share)..<min(listed.count, (w + 1) * share)]) }
                slots[w].part.withLock { $0 = part }
            }
            for part in try slots.map({ slot in try slot.part.withLock { $0 }!.get() }) {
                s.entries += part.entries
                s.ignored += part.ignored
                s.errors += part.errors
                s.takenAway += part.takenAway
            }
        }
        s.engineABI = engineABI.resolve(entries: s.entries)
        for i in s.entries.indices { s.entries[i] = s.entries[i].judged(engine: s.engineABI.generation) }
        return s
    }

    /// One worker's part of a parallel scan, written by that worker alone.
    private final class ScanSlot: Sendable {
        let part = Mutex<Result<Scan, any Error>?>(nil)
    }

    /// Directories with at least this many names are scanned by more than one thread.
    static let parallelScanFiles = 4096

    /// The entries of some of the directory's names, not yet judged against an engine.
    private func scan(_ listed: ArraySlice<(name: String, type: UInt8)>) throws -> Scan {
        var s = Scan()
        for (name, type) in listed {
            if CheckpointName.isTakenAway(name) { s.takenAway.append(name); continue }
            do {
                if let entry = try entry(named: name, engine: nil, listedAs: type) { s.entries.append(entry) } else {
                    let st = try FileStatus.of(name: name, in: fd, dirPath: path)
                    s.ignored.append((name, Verifier.ignoreReason(name: name, status: st) ?? "not a checkpoint"))
                }
            } catch let e as KVCError {
                if e.errno == .noSuchFileOrDirectory { continue } // removed while we listed: not an error
                s.errors.append(e)
                if let st = try? FileStatus.of(name: name, in: fd, dirPath: path), st.isRegular,
                   let u = CacheEntry.unreadable(name: name, status: st, error: e) {
                    s.entries.append(u)
                }
            }
        }
        return s
    }

    /// The index entry for one name, or nil when the name or file type is not a checkpoint's.
    public func entry(named name: String, engine: Generation?) throws -> CacheEntry? {
        try entry(named: name, engine: engine, listedAs: UInt8(DT_UNKNOWN))
    }

    /// `entry(named:engine:)` for a name `readdir` listed with type `listedAs`. A regular
    /// file is opened at once, non-blocking: should another kind of file have taken the
    /// name since the listing (a FIFO would block an open), the open returns, and
    /// `CacheEntry.read`'s `fstat` refuses what is not a regular file. Any other type,
    /// or none, is asked with `fstatat` first, and only a regular file is opened.
    func entry(named name: String, engine: Generation?, listedAs type: UInt8) throws -> CacheEntry? {
        guard !name.utf8.contains(UInt8(ascii: "/")), let sha = CheckpointName.key(of: name) else { return nil }
        if type != UInt8(DT_REG) {
            let st = try FileStatus.of(name: name, in: fd, dirPath: path)
            guard st.isRegular else { return nil }
        }
        let file = try CheckpointFile.open(in: fd, name: name, dirPath: path, flags: O_RDONLY | O_NONBLOCK)
        let st = try file.status()
        guard st.isRegular else { return nil }
        return try CacheEntry.read(file, status: st, name: name, sha: sha, engine: engine)
    }

    /// Verifies one name in this directory.
    public func verify(name: String, with verifier: Verifier) throws -> VerifyReport {
        let p = pathOf(name)
        guard !name.utf8.contains(UInt8(ascii: "/")) else { return Verifier.ignored(path: p, name: name, size: 0, note: "not a plain name") }
        let st = try FileStatus.of(name: name, in: fd, dirPath: path)
        if let reason = Verifier.ignoreReason(name: name, status: st) {
            return Verifier.ignored(path: p, name: name, size: st.size, note: reason)
        }
        let file = try CheckpointFile.open(in: fd, name: name, dirPath: path, flags: O_RDONLY)
        return try verifier.verify(file, name: name)
    }

    public enum RemovalOutcome: Sendable, Equatable {
        case removed
        /// The name is gone already.
        case vanished
        /// The name now names another inode (the engine replaced it): left alone.
        case replaced
    }

    /// Removes `name` only if it still names the inode `identity` says: for
    /// eviction, where the file is good and the engine may remove or replace
    /// it at any moment. There is no "unlink if inode" system call, so a store
    /// renamed in between the check and the unlink can still be removed; that
    /// costs a checkpoint the engine can write again, never a verdict. Removing
    /// a corrupt file takes the stricter road of `removeIfCorrupt`.
    public func remove(name: String, identity: FileIdentity) throws -> RemovalOutcome {
        guard !name.utf8.contains(UInt8(ascii: "/")), name != ".", name != ".." else {
            throw KVCError(.invalidArgument, path: pathOf(name), "refusing to remove a name that is not a plain file name")
        }
        let st: FileStatus
        do { st = try FileStatus.of(name: name, in: fd, dirPath: path) } catch let e as KVCError where e.errno == .noSuchFileOrDirectory {
            return .vanished
        }
        guard st.isRegular, st.device == identity.device, st.inode == identity.inode else { return .replaced }
        guard unlinkat(fd.rawValue, name, 0) == 0 else {
            let e = Errno(rawValue: errno)
            if e == .noSuchFileOrDirectory { return .vanished }
            throw KVCError.io(e, path: pathOf(name), "cannot remove")
        }
        return .removed
    }

}

extension CacheDirectory {
    /// The stored text of a checkpoint, read only when its length is at most
    /// `limit` (a damaged length must not cost memory). nil when unreadable or too long.
    public func text(named name: String, limit: Int = 64 << 20) -> [UInt8]? {
        guard let entry = try? entry(named: name, engine: nil), let h = entry.header, Int(h.textBytes) <= limit else { return nil }
        guard let file = try? CheckpointFile.open(in: fd, name: name, dirPath: path, flags: O_RDONLY) else { return nil }
        guard let t = try? file.read(at: UInt64(h.prologueSize), count: Int(h.textBytes)), t.count == Int(h.textBytes) else { return nil }
        return t
    }
}
