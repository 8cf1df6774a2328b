import KVCFormat
import KVScrubControl

/// The in-memory index of the cache directory and what is counted from it:
/// each file's entry, its last scrub verdict, the checksums recorded for v1
/// files, the census `status` and the metrics show, the continued waypoints an
/// arrival can supersede, and the scrub pass's walk in name order.
///
/// A value type, kept by the index maintainer in its `IndexState`. The entries,
/// verdicts and records change only through the methods here, which keep the
/// census, the walk and the dirty marks for the state database in step: a
/// file's share of the census is taken out before any change to what it is
/// counted from and put back after (`recounting`), so reading the counts costs
/// the same at 100,000 files as at 10.
///
/// The walk (`PassOrder`) is the scrubber's, kept here because every insert and
/// removal must reach it under the same lock. The scrubber says which pass it
/// walks and where its cursor is (`nextInPass`, `advancePass`, `passLeft`);
/// the walk is built again when the pass it was built for is not that one.
struct CacheIndex: Sendable {
    /// Changed only through `insert`, `remove`, `replace` and `setEngineABI`, which keep `census`.
    private(set) var entries: [String: CacheEntry] = [:] { didSet { generation &+= 1 } }
    /// Changes with every change to the entries or the records (`status` is cached against it).
    private(set) var generation: UInt64 = 0
    /// The counts `status` and the metrics show, kept with every change to the entries, the verdicts and the records.
    private(set) var census = IndexCensus()
    /// The pass's walk in name order, the pass (its start time) it was built for, and its cursor.
    private var walk = PassOrder()
    private var walkPass: Double?
    private var walkCursor: String?
    /// Continued checkpoints (waypoints) in the index: the only ones an arrival can supersede.
    private(set) var continuedNames: Set<String> = []
    private(set) var totalBytes: UInt64 = 0
    /// The last scrub verdict of each file this run (`setVerdict`).
    private(set) var verdicts: [String: Verdict] = [:]
    /// Continued checkpoints an arrival superseded, and by which file.
    var supersededBy: [String: String] = [:]
    /// The payload ABI of the engine in force, and how it was chosen.
    private(set) var engineABI = EngineABI.Resolution(generation: nil, source: "none yet")
    /// Checksums recorded for v1 files (persisted), by file name.
    private(set) var records: [String: RecordedChecksum] = [:] { didSet { generation &+= 1 } }
    /// Names whose record changed since the last save.
    private var dirtyRecords: Set<String> = []

    init() {}

    subscript(name: String) -> CacheEntry? { entries[name] }
    var count: Int { entries.count }
    var isEmpty: Bool { entries.isEmpty }

    mutating func setRecord(_ name: String, _ r: RecordedChecksum) {
        recounting(name) { s in
            s.records[name] = r
            s.dirtyRecords.insert(name)
        }
    }

    /// The records as the state database kept them (start-up).
    mutating func loadRecords(_ loaded: [String: RecordedChecksum]) {
        records = loaded
        recount()
    }

    /// The file's last scrub verdict; for a file in the index only.
    mutating func setVerdict(_ name: String, _ v: Verdict) {
        guard entries[name] != nil else { return }
        recounting(name) { $0.verdicts[name] = v }
    }

    /// Runs `change`, which changes only what `name` is counted from, with `name`'s share of the census
    /// taken out before and put back after.
    private mutating func recounting<R>(_ name: String, _ change: (inout CacheIndex) -> R) -> R {
        if let e = entries[name] { census.count(e, verdict: verdicts[name], recorded: isRecorded(name), by: -1) }
        let r = change(&self)
        if let e = entries[name] { census.count(e, verdict: verdicts[name], recorded: isRecorded(name), by: 1) }
        return r
    }

    private mutating func recount() {
        census = IndexCensus(index: entries, verdicts: verdicts, isRecorded: isRecorded)
    }

    /// Whether the index's v1 file `name` has a record that matches it (nil: not a v1 file).
    func isRecorded(_ name: String) -> Bool? {
        guard let e = entries[name], let h = e.header, h.version == 1 else { return nil }
        return records[name].map { $0.key == RecordedChecksum.Key(identity: e.identity, header: h) } ?? false
    }

    var checksumProtection: StatusReport.Checksums { census.checksums }

    /// The records that changed since the last save, for the state database; clears the marks.
    mutating func takeRecordChanges() -> [StateDatabase.Change] {
        defer { dirtyRecords.removeAll(keepingCapacity: true) }
        return dirtyRecords.map { .record($0, records[$0]) }
    }

    /// Puts a new ABI in force and judges the whole index against it.
    mutating func setEngineABI(_ r: EngineABI.Resolution) {
        guard r != engineABI else { return }
        let changed = r.generation != engineABI.generation
        engineABI = r
        if changed {
            entries = entries.mapValues { $0.judged(engine: r.generation) }
            recount()
        }
    }

    mutating func insert(_ e: CacheEntry) {
        let old = entries[e.fileName]
        if let old { totalBytes -= old.fileSize }
        recounting(e.fileName) { $0.entries[e.fileName] = e }
        totalBytes += e.fileSize
        if e.header?.reason == .continued { continuedNames.insert(e.fileName) } else { continuedNames.remove(e.fileName) }
        if walkPass != nil { walk.inserted(e.fileName, size: e.fileSize, oldSize: old?.fileSize, cursor: walkCursor) }
    }

    @discardableResult
    mutating func remove(_ name: String) -> CacheEntry? {
        if let e = entries[name] { census.count(e, verdict: verdicts[name], recorded: isRecorded(name), by: -1) }
        verdicts.removeValue(forKey: name)
        supersededBy.removeValue(forKey: name)
        if records.removeValue(forKey: name) != nil { dirtyRecords.insert(name) }
        continuedNames.remove(name)
        guard let old = entries.removeValue(forKey: name) else { return nil }
        totalBytes -= old.fileSize
        if walkPass != nil { walk.removed(name, size: old.fileSize, cursor: walkCursor) }
        return old
    }

    /// A scan's index, its entries judged already under the ABI it resolved: both put in force at once,
    /// so the index is not judged a second time (at 100,000 files, a copy of the whole index).
    mutating func replace(with scanned: [CacheEntry], judgedUnder abi: EngineABI.Resolution) {
        engineABI = abi
        replace(with: scanned)
    }

    mutating func replace(with scanned: [CacheEntry]) {
        // One walk for the entries, the continued names and the bytes: at start-up this is 100,000 entries.
        var fresh = [String: CacheEntry](minimumCapacity: scanned.count)
        var continued = Set<String>()
        var bytes: UInt64 = 0
        for e in scanned where fresh[e.fileName] == nil {
            fresh[e.fileName] = e
            bytes += e.fileSize
            if e.header?.reason == .continued { continued.insert(e.fileName) }
        }
        entries = fresh
        continuedNames = continued
        totalBytes = bytes
        verdicts = verdicts.filter { entries[$0.key] != nil }
        supersededBy = supersededBy.filter { entries[$0.key] != nil }
        for name in records.keys where entries[name] == nil {
            records.removeValue(forKey: name)
            dirtyRecords.insert(name)
        }
        walkPass = nil // built again from the new entries when next asked
        recount()
    }

    /// The walk of `pass` (its start time; nil: no pass) from `cursor`, built when the pass it walks is
    /// another one: a pass started, ended, was cancelled or resumed after a restart, or the index was replaced.
    private mutating func walking(_ pass: Double?, cursor: String?) {
        guard walkPass != pass else { return }
        walk.rebuild(index: entries, cursor: cursor, active: pass != nil)
        walkPass = pass
        walkCursor = cursor
    }

    /// The next file of the pass in progress: the first name after its cursor.
    mutating func nextInPass(_ pass: Double, cursor: String?) -> String? {
        walking(pass, cursor: cursor)
        return walk.next(index: entries, cursor: walkCursor)
    }

    /// The pass in progress finished `name`: its cursor moves past it.
    mutating func advancePass(_ pass: Double, from cursor: String?, to name: String) {
        walking(pass, cursor: cursor)
        walk.advanced(from: walkCursor, to: name, index: entries)
        walkCursor = name
    }

    /// The pass ended or was cancelled: the walk is dropped (a pass started at the same time is walked afresh).
    mutating func endPass() {
        walk.rebuild(index: [:], cursor: nil, active: false)
        walkPass = nil
        walkCursor = nil
    }

    /// Files and bytes the pass in progress has still to verify (nothing, when no pass runs).
    mutating func passLeft(_ pass: Double?, cursor: String?) -> (files: Int, bytes: UInt64) {
        guard let pass else {
            endPass()
            return (0, 0)
        }
        walking(pass, cursor: cursor)
        return (walk.leftFiles, walk.leftBytes)
    }
}
