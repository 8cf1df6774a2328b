import KVCFormat

/// What the index maintainer owns (`Daemon+Maintenance`, `Evictor`, `OrphanSweep`):
/// the index, the eviction ledger, the orphan sweep's candidates and the file
/// system's free space. Kept in a `PartState`; the scrubber changes the index
/// only through its narrow methods (a verdict, a record, a file it took away),
/// and the control handler and the metrics only read it.
public struct IndexState: Sendable {
    public var index = CacheIndex()
    public var ledger = EvictionLedger()
    /// Temporary files seen old and unchanged once: removed at the next sweep if still so (`OrphanSweep`).
    var orphanCandidates: [String: FileStamp] = [:]
    var nextOrphanSweep: Double = 0
    /// Whether the cache directory is watched now (false before start-up opened it, and while it is gone).
    public var watching = false
    /// Free and total bytes of the cache's file system, as last measured.
    public var freeBytes: UInt64?
    public var fsBytes: UInt64?

    public init() {}

    /// Shortcuts to the index, which is what most readers want.
    public subscript(name: String) -> CacheEntry? { index[name] }
}
