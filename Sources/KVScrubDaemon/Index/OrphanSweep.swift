import Foundation
import KVCFormat
#if canImport(Glibc)
import Glibc
#endif

/// Temporary files an engine left behind: the server's `<sha>.kv.tmp.<pid>`
/// and ds4-agent's `<name>.tmp.XXXXXX` (mkstemp). An engine killed mid-store
/// (OOM, a restart, a power cut) never removes its temporary file, often
/// gigabytes, invisible to its budget and to ours.
///
/// A temporary file is removed only when all of these hold, so a store in
/// progress is never touched:
///
/// 1. it has not been modified (mtime) for `orphan_temp_minutes` (60 by
///    default): the engine writes a store in one go, and a slow one still
///    moves mtime with every chunk;
/// 2. for the `<pid>` form (all digits), no process with that pid exists
///    (`kill(pid, 0)` fails with ESRCH; EPERM means one exists). An engine in
///    another pid namespace is not seen, and rule 1 alone protects it;
/// 3. a second sweep, one sweep interval later, finds it unchanged: same
///    inode, size, mtime and ctime (a file still growing fails this);
/// 4. the unlink names the inode that was examined (`CacheDirectory.remove`).
///
/// Nothing else in the directory is ever a candidate.
enum OrphanSweep {
    struct Removed: Sendable, Equatable {
        var name: String
        var bytes: UInt64
        var idleSeconds: Double
        /// "pid-N-gone", or "no-pid-in-name" (one word, for the journal and the log).
        var writer: String
    }

    struct Outcome {
        var candidates: [String: FileStamp]
        var removed: [Removed] = []
        var failed: [(String, String)] = []
    }

    /// How often to sweep: a quarter of the idle time, between 1 s and 5 minutes.
    static func interval(minutes: Double) -> Double { min(300, max(1, minutes * 60 / 4)) }

    /// The pid a server's temporary name carries, when its suffix is all digits.
    static func pid(in name: String) -> Int32? {
        guard let r = name.range(of: ".kv.tmp.", options: .backwards) else { return nil }
        let tail = name[r.upperBound...]
        guard !tail.isEmpty, tail.allSatisfy(\.isASCII), tail.allSatisfy(\.isNumber) else { return nil }
        return Int32(tail)
    }

    /// Whether a process with this pid exists (in our pid namespace).
    static func alive(_ pid: Int32) -> Bool {
        guard pid > 0 else { return false }
        return kill(pid, 0) == 0 || errno == EPERM
    }

    static func run(_ dir: CacheDirectory, minutes: Double, now: Double, candidates: [String: FileStamp], dryRun: Bool) -> Outcome {
        var out = Outcome(candidates: [:])
        guard let names = try? dir.names() else { return Outcome(candidates: candidates) }
        for name in names where CheckpointName.isTemporary(name) {
            guard let st = try? FileStatus.of(name: name, in: dir.fd, dirPath: dir.path), st.isRegular else { continue }
            let stamp = st.stamp
            let idle = now - Double(stamp.modifiedAtNanos) / 1e9
            guard idle >= minutes * 60 else { continue }
            let pid = pid(in: name)
            if let pid, alive(pid) { continue }
            guard let seen = candidates[name], seen == stamp else {
                out.candidates[name] = stamp // first look: confirmed (or not) at the next sweep
                continue
            }
            if dryRun { out.candidates[name] = stamp; continue }
            do {
                if case .removed = try dir.remove(name: name, identity: stamp.identity) {
                    out.removed.append(Removed(name: name, bytes: stamp.size, idleSeconds: idle,
                                               writer: pid.map { "pid-\($0)-gone" } ?? "no-pid-in-name"))
                }
            } catch {
                out.failed.append((name, "\(error)"))
            }
        }
        return out
    }
}
