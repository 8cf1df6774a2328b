import Foundation

/// The daemon's small state file (`<state_dir>/state.json`): scrub progress
/// and the counters that matter across restarts. Written whole to a temporary
/// file and renamed, so a crash leaves the old or the new state, never half.
/// It lives outside the cache directory, so it can never be taken for, or
/// collide with, a checkpoint.
public struct StateStore: Sendable {
    public struct Record: Codable, Sendable, Equatable {
        public var version = 1
        public var scrub: DaemonState.ScrubProgress
        public var counters: DaemonState.Counters
        public var recentEvictions: [String: DaemonState.EvictionRecord]?
        public var regretLog: [DaemonState.RegretRecord]?
        /// The removal brake: engaged until an operator releases it, across restarts.
        public var brake: RemovalBrake?

        public init(scrub: DaemonState.ScrubProgress, counters: DaemonState.Counters,
                    recentEvictions: [String: DaemonState.EvictionRecord]? = nil, regretLog: [DaemonState.RegretRecord]? = nil,
                    brake: RemovalBrake? = nil) {
            self.brake = brake
            self.scrub = scrub
            self.counters = counters
            self.recentEvictions = recentEvictions
            self.regretLog = regretLog
        }
    }

    public let path: String

    public init(directory: String) { path = directory + "/state.json" }

    public func load() throws -> Record? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return try JSONDecoder().decode(Record.self, from: data)
    }

    public func save(_ record: Record) throws {
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let tmp = path + ".tmp"
        try enc.encode(record).write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, path) == 0 else { throw CocoaError(.fileWriteUnknown) }
    }
}
