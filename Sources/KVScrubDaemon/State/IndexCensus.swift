import KVCFormat
import KVScrubControl

/// The counts over the whole index that `status` and the metrics show: files
/// and bytes by last verdict and format version, what protects each file's
/// contents, and how many no engine in force can use.
///
/// Kept up to date with every change to what they are counted from (an
/// entry, its verdict, its recorded checksum), not counted again when read:
/// at 100,000 files a count takes 20-30 ms under the index's lock, and during a
/// scrub pass a verdict changes with every file, so each metrics scrape
/// counted afresh and held inotify, `status` and the scrub up that long
/// (issue #21). `CacheIndex` takes a file's share out before it
/// changes the file and puts it back after (`count(_:verdict:recorded:by:)`);
/// wholesale changes (a new index, a new engine ABI, the records loaded at
/// start-up) count again from scratch with `init(index:verdicts:isRecorded:)`,
/// which is also what the tests hold the running counts against.
struct IndexCensus: Sendable, Equatable {
    struct Files: Sendable, Equatable {
        var count = 0
        var bytes: UInt64 = 0
    }

    /// The metrics' `verdict` label values; "corrupt" stays in the index only under dry_run.
    static let verdictLabels = ["ok", "corrupt", "incompatible", "unverified"]
    /// The metrics' `version` label values.
    static let versionLabels = ["1", "2", "unknown"]

    /// Files and bytes by verdict and version: slot `verdict * versionLabels.count + version`.
    private(set) var files = [Files](repeating: Files(), count: verdictLabels.count * versionLabels.count)
    /// What protects the index's files: their own CRC32C (v2), a matching record (v1), nothing yet (v1).
    private(set) var checksums = StatusReport.Checksums(inFile: 0, recorded: 0, notYetRecorded: 0)
    /// Files no engine of the ABI in force can use.
    private(set) var incompatible = 0

    init() {}

    /// Counted from scratch.
    init(index: [String: CacheEntry], verdicts: [String: Verdict], isRecorded: (String) -> Bool?) {
        for (name, e) in index { count(e, verdict: verdicts[name], recorded: isRecorded(name), by: 1) }
    }

    /// Files and bytes with this verdict label and version label.
    func files(verdict: Int, version: Int) -> Files { files[verdict * Self.versionLabels.count + version] }

    private static let verdictSlots: [Verdict: Int] = Dictionary(uniqueKeysWithValues: Verdict.allCases.compactMap { v in
        verdictLabels.firstIndex(of: v.rawValue).map { (v, $0) }
    })
    private static let incompatibleSlot = verdictLabels.firstIndex(of: "incompatible")!
    private static let unverifiedSlot = verdictLabels.firstIndex(of: "unverified")!
    private static let versionSlots: [Int: Int] = Dictionary(uniqueKeysWithValues: versionLabels.enumerated().compactMap { i, v in
        Int(v).map { ($0, i) }
    })
    private static let unknownVersionSlot = versionLabels.firstIndex(of: "unknown")!

    /// Adds (`sign` 1) or takes out (-1) one file's share: `verdict` its last scrub verdict this run,
    /// `recorded` whether a recorded checksum matches it (nil: not a v1 file).
    mutating func count(_ e: CacheEntry, verdict: Verdict?, recorded: Bool?, by sign: Int) {
        if e.unusable != nil { incompatible += sign }
        if e.header?.version == 2 { checksums.inFile += sign }
        else if let recorded { if recorded { checksums.recorded += sign } else { checksums.notYetRecorded += sign } }
        let verdictSlot: Int?
        if e.unusable != nil { verdictSlot = Self.incompatibleSlot }
        else if let verdict { verdictSlot = Self.verdictSlots[verdict] }  // nil (`ignored`): not exported
        else { verdictSlot = Self.unverifiedSlot }
        let versionSlot = e.header.map { Self.versionSlots[Int($0.version)] } ?? Self.unknownVersionSlot
        guard let verdictSlot, let versionSlot else { return }
        let slot = verdictSlot * Self.versionLabels.count + versionSlot
        files[slot].count += sign
        if sign > 0 { files[slot].bytes += e.fileSize } else { files[slot].bytes -= e.fileSize }
    }
}
