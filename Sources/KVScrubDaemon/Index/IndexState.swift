import KVCFormat

/// What the index maintainer owns (`IndexMaintainer`, with its `Evictor` and `OrphanSweep`):
/// the index, the eviction ledger, the orphan sweep's candidates, the cache
/// directory it holds open, and the file system's free space. Kept in a
/// `PartState`; the scrubber changes the index
/// only through its narrow methods (a verdict, a record, a file it took away),
/// and the control handler and the metrics only read it.
struct IndexState: Sendable {
    var index = CacheIndex()
    var ledger = EvictionLedger()
    /// Temporary files seen old and unchanged once: removed at the next sweep if still so (`OrphanSweep`).
    var orphanCandidates: [String: FileStamp] = [:]
    var nextOrphanSweep: Double = 0
    /// The cache directory, held open and watched; nil before start-up opened it and while it is gone.
    var directory: CacheDirectory?
    /// Whether the cache directory is watched now.
    var watching: Bool { directory != nil }
    /// Free and total bytes of the cache's file system, as last measured.
    var freeBytes: UInt64?
    var fsBytes: UInt64?

    init() {}

    /// Shortcuts to the index, which is what most readers want.
    subscript(name: String) -> CacheEntry? { index[name] }
}
