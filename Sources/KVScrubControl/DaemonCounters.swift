/// The daemon's counters, as `status` and the metrics report them; most
/// persist in the state database and go on after a restart.
public struct DaemonCounters: Codable, Sendable, Equatable {
    // Persisted across restarts.
    public var corruptFound: UInt64 = 0
    public var corruptRemoved: UInt64 = 0
    public var evictedBudget: UInt64 = 0
    public var evictedFreeSpace: UInt64 = 0
    public var evictedIncompatible: UInt64 = 0
    public var evictedBytes: UInt64 = 0
    public var passesCompleted: UInt64 = 0
    public var scrubBytes: UInt64 = 0
    // Optional: absent in state files written before they existed.
    public var corruptFoundByRegion: [String: UInt64]?
    public var corruptRemovedByRegion: [String: UInt64]?
    public var regrets: UInt64?
    /// Proven-corrupt files moved to quarantine (the brake's, or quarantine_dir) rather than unlinked.
    public var corruptQuarantined: UInt64?
    /// Corrupt verdicts a second look did not confirm (the file changed, or read ok after settling).
    public var corruptUnconfirmed: UInt64?
    /// Files of a superseded engine generation reclaimed.
    public var evictedSuperseded: UInt64?
    /// Temporary files an engine left behind (a store killed half way), removed, and their bytes.
    public var orphansRemoved: UInt64?
    public var orphanBytesRemoved: UInt64?
    /// Checkpoints the engine deleted itself (its eviction, a failed restore, a replaced file).
    public var engineDeletedFiles: UInt64?
    public var engineDeletedBytes: UInt64?
    // This run only.
    public var inotifyEvents: UInt64 = 0
    public var rescans: UInt64 = 0
    public var errors: UInt64 = 0

    public var evictedFiles: UInt64 { evictedBudget + evictedFreeSpace + evictedIncompatible + (evictedSuperseded ?? 0) }

    public init() {}
}
