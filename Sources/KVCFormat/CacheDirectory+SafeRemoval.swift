import CKVCLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Removing a corrupt checkpoint without ever removing a good one, next to an
/// engine that takes no locks (kvc-format.md revision 2, "Removing a file as
/// corrupt").
///
/// The engine rewrites a checkpoint's header (touch) and its trailer (tool
/// map: truncate, write, header) in place, and renames fresh stores over the
/// name, all at any moment and without telling anyone. A verdict reached while
/// that happens proves nothing. Nothing the engine does can be excluded, so
/// safety comes from what can be observed, `FileStamp` (inode, size, mtime,
/// ctime), and from an atomic take-away:
///
/// 1. A full verification found damage, and the stamp was the same before
///    the first byte and after the last (`VerifyReport.unchangedDuringRead`).
/// 2. The file has then been left alone for a settle time (nothing changed
///    its stamp for that long, so no rewrite is half done), and a second full
///    verification, begun after that, finds damage again with the stamp still
///    the one of the first verdict.
/// 3. The name is taken away atomically: renamed to a private name in the same
///    directory (`CheckpointName.takenAwayName`), and the inode under the
///    private name is checked to be the one verified. Only then is it
///    unlinked, or moved to a quarantine directory. If the rename took
///    another inode (the engine renamed a new store in after step 2), it is
///    put back with `renameat2(RENAME_NOREPLACE)`, so a newer store is never
///    overwritten either.
///
/// After step 3's rename nothing the engine does can reach the file we hold:
/// a store makes a new inode under the old name, a touch by path opens that
/// new inode. A crash between the rename and the unlink leaves a private name
/// behind; `recoverTakenAway` settles it at the next start.
///
/// The rename changes the inode's ctime, so step 3 compares identity, size
/// and mtime only.
extension CacheDirectory {
    public enum SafeRemovalOutcome: Sendable {
        case removed(VerifyReport)
        case quarantined(VerifyReport, to: String)
        /// The second look found no damage: it stays.
        case notCorrupt(VerifyReport)
        /// The file changed since the first verdict, or during the second read: nothing is proven; check it again later.
        case changed
        /// The file has not yet been left alone for the settle time; ask again after `seconds`.
        case notSettled(seconds: Double)
        /// The name now names another inode (or is no regular file): it stays, to be checked afresh.
        case replaced
        case vanished
        /// Proven corrupt, but the move into quarantine failed: put back under its name, where it stays.
        case keptInPlace(VerifyReport, why: String)
    }

    /// A quarantine directory, held open for as long as this value lives.
    public struct Quarantine: Sendable {
        public let directory: CacheDirectory
        public var fd: FileDescriptor { directory.fd }
        public var path: String { directory.path }
        public init(directory: CacheDirectory) { self.directory = directory }

        /// Opens `path` as a quarantine, creating it and any missing parents (mode 0700).
        public static func open(creating path: String) throws -> Quarantine {
            var prefix = ""
            for part in path.split(separator: "/") {
                prefix += "/" + part
                if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                    throw KVCError.io(Errno(rawValue: errno), path: prefix, "cannot create the quarantine directory")
                }
            }
            return Quarantine(directory: try CacheDirectory(path: path))
        }
    }

    /// The points of the rule a crash test stops the process at (`onStep`), in order.
    /// `package`: a seam for kvscrubd's crash tests, not part of the library's API.
    package enum RemovalStep: String, Sendable, CaseIterable {
        /// The second look agreed: the file is proven corrupt.
        case verdict
        /// The name was renamed to the private name.
        case renamed
        /// The private name was checked to hold the verified inode.
        case inodeChecked = "inode-checked"
        /// About to unlink (or move to quarantine).
        case unlinking
        /// Unlinked (or moved to quarantine).
        case unlinked
    }

    /// What to do with a file once it is proven corrupt and taken away.
    public enum Disposal {
        case unlink
        case quarantine(Quarantine)
        /// Leave it under its name, untouched (the removal brake's default): say why.
        case keepInPlace(why: String)
    }

    /// Seconds still to wait before a file last changed at `stamp` has been left alone for `settle` seconds.
    public static func settleRemaining(_ stamp: FileStamp, settle: Double, now: Double) -> Double {
        max(0, stamp.lastChange + settle - now)
    }

    /// Steps 2 and 3 of the removal rule for a file `first` found corrupt.
    /// Never waits: when the file has not settled yet it says how long to wait.
    /// `decide` is asked once the second look has proven the damage: how to
    /// dispose of the file, or nil to keep it in place (what it returns is
    /// carried out only if the take-away holds the verified inode).
    public func removeIfCorrupt(name: String, first: VerifyReport, verifier: Verifier, settle: Double,
                                now: () -> Double, decide: (VerifyReport) -> Disposal?) throws -> SafeRemovalOutcome {
        try removeIfCorrupt(name: name, first: first, verifier: verifier, settle: settle, now: now, onStep: { _ in }, decide: decide)
    }

    /// `removeIfCorrupt`, telling `onStep` each point of the rule as it is passed: kvscrubd's
    /// crash tests kill the daemon there (`package`: for kvscrubd's own modules, not the library's API).
    package func removeIfCorrupt(name: String, first: VerifyReport, verifier: Verifier, settle: Double,
                                 now: () -> Double, onStep: (RemovalStep) -> Void,
                                 decide: (VerifyReport) -> Disposal?) throws -> SafeRemovalOutcome {
        guard !name.contains("/"), CheckpointName.isCheckpoint(name) else {
            throw KVCError(.invalidArgument, path: pathOf(name), "refusing to remove a name that is not a checkpoint's")
        }
        guard first.verdict == .corrupt, first.unchangedDuringRead, let stamp = first.after else { return .changed }
        let current: FileStatus
        do { current = try FileStatus.of(name: name, in: fd, dirPath: path) } catch let e as KVCError where e.errno == .noSuchFileOrDirectory {
            return .vanished
        }
        guard current.isRegular, current.identity == stamp.identity else { return .replaced }
        guard current.stamp == stamp else { return .changed }
        let wait = CacheDirectory.settleRemaining(stamp, settle: settle, now: now())
        guard wait == 0 else { return .notSettled(seconds: wait) }
        let file = try CheckpointFile.open(in: fd, name: name, dirPath: path, flags: O_RDONLY)
        guard try file.status().stamp == stamp else { return .changed }
        let second = try verifier.verify(file, name: name)
        guard second.unchangedDuringRead, second.before == stamp else { return .changed }
        guard second.verdict == .corrupt else { return .notCorrupt(second) }
        onStep(.verdict)
        guard let disposal = decide(second) else { return .keptInPlace(second, why: "held back: nothing to move it to") }
        if case .keepInPlace(let why) = disposal { return .keptInPlace(second, why: why) }
        return try takeAway(name: name, stamp: stamp, report: second, disposal: disposal, onStep: onStep)
    }

    /// Step 3: rename to the private name, check it is the verified inode, then dispose of it.
    func takeAway(name: String, stamp: FileStamp, report: VerifyReport, disposal: Disposal,
                  onStep: (RemovalStep) -> Void = { _ in }) throws -> SafeRemovalOutcome {
        let taken = CheckpointName.takenAwayName(for: name, inode: stamp.identity.inode)
        guard renameat(fd.rawValue, name, fd.rawValue, taken) == 0 else {
            let e = Errno(rawValue: errno)
            if e == .noSuchFileOrDirectory { return .vanished }
            throw KVCError.io(e, path: pathOf(name), "cannot rename to \(taken)")
        }
        onStep(.renamed)
        let held = try FileStatus.of(name: taken, in: fd, dirPath: path)
        guard held.identity == stamp.identity, held.size == stamp.size, held.modifiedAtNanos == stamp.modifiedAtNanos else {
            // Not the file verified: the engine stored a new one after the second look. Put it back, never over a newer one.
            try putBack(taken, as: name)
            return .replaced
        }
        onStep(.inodeChecked)
        onStep(.unlinking)
        switch disposal {
        case .unlink:
            guard unlinkat(fd.rawValue, taken, 0) == 0 else {
                let e = Errno(rawValue: errno)
                try? putBack(taken, as: name)
                throw KVCError.io(e, path: pathOf(taken), "cannot remove")
            }
            onStep(.unlinked)
            return .removed(report)
        case .quarantine(let q):
            do {
                let to = try moveIntoQuarantine(taken, as: name, inode: stamp.identity.inode, quarantine: q)
                onStep(.unlinked)
                return .quarantined(report, to: to)
            } catch {
                try putBack(taken, as: name)
                return .keptInPlace(report, why: "\(error)")
            }
        case .keepInPlace(let why):
            try putBack(taken, as: name)
            return .keptInPlace(report, why: why)
        }
    }

    /// Renames a private name back to its checkpoint name, unless that name is taken meanwhile.
    func putBack(_ taken: String, as name: String) throws {
        guard kvc_rename_noreplace(fd.rawValue, taken, fd.rawValue, name) == 0 else {
            throw KVCError.io(Errno(rawValue: errno), path: pathOf(taken), "cannot put back as \(name)")
        }
    }

    /// Moves a held file into quarantine as `<name>`, or `<name>.<inode>` when that is taken; returns its new path.
    /// Across file systems (or systemd's bind mounts, which rename(2) treats alike) the file
    /// is copied and synced first, and only then is the private name unlinked.
    func moveIntoQuarantine(_ taken: String, as name: String, inode: UInt64, quarantine q: Quarantine) throws -> String {
        for target in [name, "\(name).\(inode)"] {
            if kvc_rename_noreplace(fd.rawValue, taken, q.fd.rawValue, target) == 0 { return q.path + "/" + target }
            let e = Errno(rawValue: errno)
            if e == .improperLink {
                guard try copy(taken, into: q, as: target) else { continue }
                guard unlinkat(fd.rawValue, taken, 0) == 0 else {
                    throw KVCError.io(Errno(rawValue: errno), path: pathOf(taken), "copied into quarantine, but cannot remove")
                }
                return q.path + "/" + target
            }
            if e != .fileExists { throw KVCError.io(e, path: pathOf(taken), "cannot move into quarantine \(q.path)") }
        }
        throw KVCError(.io, path: pathOf(taken), "quarantine \(q.path) already holds \(name) and \(name).\(inode)")
    }

    /// Copies `name` into `q` as a new file `target` (false when `target` exists), synced before returning.
    func copy(_ name: String, into q: Quarantine, as target: String) throws -> Bool {
        let src = try CheckpointFile.open(in: fd, name: name, dirPath: path, flags: O_RDONLY)
        let dst: CheckpointFile
        do {
            dst = try CheckpointFile.open(in: q.fd, name: target, dirPath: q.path, flags: O_WRONLY | O_CREAT | O_EXCL)
        } catch let e as KVCError where e.errno == .fileExists {
            return false
        }
        do {
            let buffer = ReadBuffer(count: 1 << 20)
            var offset: UInt64 = 0
            while true {
                let n = try src.read(at: offset, into: buffer.bytes)
                if n == 0 { break }
                try dst.write(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<n]), at: offset)
                offset += UInt64(n)
            }
            try dst.sync()
        } catch {
            _ = unlinkat(q.fd.rawValue, target, 0)
            throw error
        }
        return true
    }

    public enum LeftoverOutcome: Sendable, Equatable {
        case removed(String)
        case quarantined(String, to: String)
        /// It verified ok (or could not be proven corrupt): back under its checkpoint name.
        case putBack(String)
        /// Could not be settled (its name is taken by a newer file and no quarantine took it): left under its private name.
        case left(String, why: String)
    }

    /// Settles a private name a crash left behind (start-up): verified again;
    /// proven corrupt (an undisturbed read) it is disposed of, otherwise it
    /// goes back under its name. A good leftover whose name a newer store now
    /// holds is an older copy of the same text: it goes to quarantine, or stays.
    public func recoverTakenAway(_ taken: String, verifier: Verifier, disposal: Disposal) -> LeftoverOutcome {
        guard let name = CheckpointName.originalName(ofTakenAway: taken) else { return .left(taken, why: "not a private name") }
        do {
            let file = try CheckpointFile.open(in: fd, name: taken, dirPath: path, flags: O_RDONLY)
            let report = try verifier.verify(file, name: name)
            if report.verdict == .corrupt && report.unchangedDuringRead {
                switch disposal {
                case .unlink:
                    guard unlinkat(fd.rawValue, taken, 0) == 0 else {
                        throw KVCError.io(Errno(rawValue: errno), path: pathOf(taken), "cannot remove")
                    }
                    return .removed(name)
                case .quarantine(let q):
                    let to = try moveIntoQuarantine(taken, as: name, inode: report.identity?.inode ?? 0, quarantine: q)
                    return .quarantined(name, to: to)
                case .keepInPlace:
                    break // back under its name below, where it is kept
                }
            }
            do {
                try putBack(taken, as: name)
                return .putBack(name)
            } catch let e as KVCError where e.errno == .fileExists {
                if case .quarantine(let q) = disposal {
                    let to = try moveIntoQuarantine(taken, as: name, inode: report.identity?.inode ?? 0, quarantine: q)
                    return .quarantined(name, to: to)
                }
                return .left(taken, why: "\(name) now holds a newer file")
            }
        } catch {
            return .left(taken, why: "\(error)")
        }
    }

    /// One quarantined file `restoreFromQuarantine` looked at.
    public enum RestoreOutcome: Sendable, Equatable {
        /// Back in the cache under its checkpoint name.
        case restored(String, from: String)
        /// Its name in the cache holds a file now (the engine stored it again): left in quarantine.
        case nameTaken(String, from: String)
        /// Not a checkpoint's name, or it could not be moved: left in quarantine.
        case left(String, why: String)
    }

    /// Puts the files in quarantine `q` back where they came from (`<name>` or `<name>.<inode>`,
    /// as `moveIntoQuarantine` names them), each only if its name in this directory is free, never
    /// over a file the engine stored meanwhile. Across file systems (systemd's bind mounts count)
    /// a file is copied to a private name here, synced, renamed into place without replacing,
    /// and only then unlinked from quarantine.
    public func restoreFromQuarantine(_ q: Quarantine) throws -> [RestoreOutcome] {
        var out: [RestoreOutcome] = []
        for entry in try q.directory.names() {
            var name = entry
            if !CheckpointName.isCheckpoint(name), let dot = entry.lastIndex(of: "."),
               UInt64(entry[entry.index(after: dot)...]) != nil {
                name = String(entry[..<dot])
            }
            guard CheckpointName.isCheckpoint(name) else { out.append(.left(entry, why: "not a checkpoint's name")); continue }
            if kvc_rename_noreplace(q.fd.rawValue, entry, fd.rawValue, name) == 0 {
                out.append(.restored(name, from: q.path + "/" + entry))
                continue
            }
            let e = Errno(rawValue: errno)
            if e == .fileExists { out.append(.nameTaken(name, from: q.path + "/" + entry)); continue }
            guard e == .improperLink else { out.append(.left(entry, why: "cannot move back: \(e)")); continue }
            // Another file system: copy under a private name, then into place without replacing.
            let staging = CheckpointName.takenAwayName(for: name, inode: 0)
            do {
                let held = Quarantine(directory: self)
                guard try q.directory.copy(entry, into: held, as: staging) else {
                    out.append(.left(entry, why: "\(staging) exists in the cache directory"))
                    continue
                }
                if kvc_rename_noreplace(fd.rawValue, staging, fd.rawValue, name) != 0 {
                    let taken = Errno(rawValue: errno) == .fileExists
                    _ = unlinkat(fd.rawValue, staging, 0)
                    out.append(taken ? .nameTaken(name, from: q.path + "/" + entry) : .left(entry, why: "cannot rename into place"))
                    continue
                }
                _ = unlinkat(q.fd.rawValue, entry, 0)
                out.append(.restored(name, from: q.path + "/" + entry))
            } catch {
                out.append(.left(entry, why: "\(error)"))
            }
        }
        return out
    }
}
