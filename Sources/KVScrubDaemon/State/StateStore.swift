import Foundation
import KVScrubControl
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The state file of earlier versions (`<state_dir>/state.json`): scrub
/// progress and the counters that matter across restarts. The daemon now keeps
/// its state in `StateDatabase` and only reads this file, once, to migrate it;
/// `save` writes one the way those versions did (whole, to a temporary file of
/// its own, synced, renamed over the old file, the directory synced), for the
/// tests and the fuzz target's round trip.
public struct StateStore: Sendable {
    public struct Record: Codable, Sendable, Equatable {
        public var version = 1
        public var scrub: ScrubProgress
        public var counters: DaemonCounters
        public var recentEvictions: [String: EvictionLedger.Eviction]?
        public var regretLog: [EvictionLedger.Regret]?
        /// The removal brake: engaged until an operator releases it, across restarts.
        public var brake: RemovalBrake?
        /// Files found corrupt whose second look had not happened: verified again after a restart.
        public var pendingRemovals: [String]?

        public init(scrub: ScrubProgress, counters: DaemonCounters,
                    recentEvictions: [String: EvictionLedger.Eviction]? = nil, regretLog: [EvictionLedger.Regret]? = nil,
                    brake: RemovalBrake? = nil, pendingRemovals: [String]? = nil) {
            self.brake = brake
            self.pendingRemovals = pendingRemovals
            self.scrub = scrub
            self.counters = counters
            self.recentEvictions = recentEvictions
            self.regretLog = regretLog
        }
    }

    /// Why a save (or a read) failed, with the errno and the step.
    public struct SaveError: Error, CustomStringConvertible {
        public let step: String
        public let errno: Errno
        public var description: String { "\(step): \(errno)" }
    }

    public let path: String

    public init(directory: String) {
        path = directory + "/state.json"
    }

    /// Removes the temporary files of saves a crash interrupted (never the state file itself).
    public func removeStaleTemporaries() {
        let dir = (path as NSString).deletingLastPathComponent
        let prefix = (path as NSString).lastPathComponent + ".tmp."
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasPrefix(prefix) {
            unlink(dir + "/" + name)
        }
    }

    public func load() throws -> Record? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        return try JSONDecoder().decode(Record.self, from: try readWhole())
    }

    /// The state file's bytes, read with plain read(2): Foundation's `Data(contentsOf:)` leaks its
    /// 4 KiB read buffer on an empty file (LeakSanitizer, found by the state fuzz target).
    private func readWhole() throws -> Data {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SaveError(step: "open \(path)", errno: Errno(rawValue: errno)) }
        defer { close(fd) }
        var out = Data()
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SaveError(step: "read \(path)", errno: Errno(rawValue: errno))
            }
            if n == 0 { return out }
            out.append(contentsOf: chunk[0..<n])
        }
    }

    public func save(_ record: Record) throws {
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let data = try enc.encode(record)
        let tmp = "\(path).tmp.\(getpid()).\(UInt64.random(in: 0...UInt64.max))"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SaveError(step: "create \(tmp)", errno: Errno(rawValue: errno)) }
        var written = false
        defer { if !written { unlink(tmp) } }
        do {
            defer { close(fd) }
            try data.withUnsafeBytes { raw in
                var off = 0
                while off < raw.count {
                    let n = Glibc.write(fd, raw.baseAddress! + off, raw.count - off)
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw SaveError(step: "write \(tmp)", errno: Errno(rawValue: errno))
                    }
                    off += n
                }
            }
            guard fsync(fd) == 0 else { throw SaveError(step: "fsync \(tmp)", errno: Errno(rawValue: errno)) }
        }
        guard rename(tmp, path) == 0 else { throw SaveError(step: "rename to \(path)", errno: Errno(rawValue: errno)) }
        written = true
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
    }
}
