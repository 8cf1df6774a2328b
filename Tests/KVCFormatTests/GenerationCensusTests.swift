import Testing
@testable import KVCFormat

/// The superseded-generation rule on index entries alone, in simulated time.
@Suite struct GenerationCensusTests {
    static func entry(_ name: String, abi: UInt8, payloadVersion: UInt32, created: UInt64, lastUsed: UInt64? = nil,
                      reason: KVCReason = .cold, defect: String? = nil) -> CacheEntry {
        var h = KVCHeader(version: 1, quantBits: 4, reason: reason, modelID: 1, tokens: 10, ctxSize: 4096, payloadABI: abi,
                          createdAt: created, lastUsed: lastUsed ?? created, payloadBytes: 1000, textBytes: 10)
        h.reasonCode = reason.rawValue
        var e = CacheEntry(sha: name, fileName: name + ".kv", header: h, fileSize: 2000,
                           identity: FileIdentity(device: 1, inode: UInt64(name.hashValue & 0xFFFF)), unusable: defect)
        e.payloadTag = .dsv4(version: payloadVersion)
        return e
    }

    let engine = Generation.ds4e8e8779
    let hour = 3600.0

    @Test func anOldGeneration_isReclaimedOnlyAfterTheGrace_oldestFirst_sparingSessionsAndUnknownLayouts() {
        let t0: UInt64 = 1_000_000
        let entries = [
            Self.entry("b", abi: 0, payloadVersion: 1, created: t0 + 10),
            Self.entry("a", abi: 0, payloadVersion: 1, created: t0, lastUsed: t0 + 100),
            Self.entry("s", abi: 0, payloadVersion: 1, created: t0, reason: .agentSession),
            Self.entry("u", abi: 3, payloadVersion: 9, created: t0, defect: "unknown layout"),
            Self.entry("new", abi: 2, payloadVersion: 2, created: t0 + 200),
        ]
        let grace = 24 * hour
        let last = Double(t0 + 100) // the old generation's newest activity: a's restore
        #expect(GenerationCensus.reclaimable(entries: entries, engine: engine, graceSeconds: grace, now: last + grace - 1).isEmpty)
        let due = GenerationCensus.reclaimable(entries: entries, engine: engine, graceSeconds: grace, now: last + grace)
        #expect(due.map(\.sha) == ["a", "b"])
        #expect(GenerationCensus.reclaimable(entries: entries, engine: engine, graceSeconds: nil, now: last + 100 * grace).isEmpty, "off")
        #expect(GenerationCensus.reclaimable(entries: entries, engine: nil, graceSeconds: grace, now: last + 100 * grace).isEmpty,
                "no generation in force: nothing is another's")
        let report = GenerationCensus.take(entries: entries, engine: engine, graceSeconds: grace, now: last)
        let old = report.first { $0.key == "1/0/1" }
        #expect(old?.files == 3 && old?.agentSessions == 1 && old?.reclaimAt == last + grace && old?.superseded == false)
        #expect(report.first { $0.inForce }?.key == "1/2/2")
        #expect(report.first { $0.key == "unknown" }?.reclaimAt == nil)
    }

    @Test func anOldGenerationStillInUse_afterTheNewestFileInForce_isNeverSuperseded() {
        // A second engine of the old generation keeps storing and restoring: its activity is newer.
        let entries = [
            Self.entry("old", abi: 0, payloadVersion: 1, created: 500, lastUsed: 5_000),
            Self.entry("new", abi: 2, payloadVersion: 2, created: 1_000),
        ]
        #expect(GenerationCensus.reclaimable(entries: entries, engine: engine, graceSeconds: 0, now: 1e9).isEmpty)
        #expect(GenerationCensus.take(entries: entries, engine: engine, graceSeconds: 0, now: 1e9).first { !$0.inForce }?.reclaimAt == nil)
    }

    /// A whole cache of one old generation, 200,000 files: grouped in linear time. Grouping once copied
    /// each group's array at every append, so a 100,000-file cache wedged the daemon's maintenance thread
    /// under the state lock for over a quarter of an hour (found by `Benchmarks/run daemon --only scale`).
    /// Linear, this takes well under a second here; quadratic, it would take many minutes.
    @Test func aLargeCache_isGroupedInLinearTime() {
        let n = 200_000
        let entries = (0..<n).map { i in Self.entry(String(i), abi: 0, payloadVersion: 1, created: UInt64(1_000 + i % 500)) }
            + [Self.entry("new", abi: 2, payloadVersion: 2, created: 10_000)]
        let t0 = ContinuousClock.now
        let due = GenerationCensus.reclaimable(entries: entries, engine: engine, graceSeconds: 0, now: 1e9)
        let took = ContinuousClock.now - t0
        #expect(due.count == n)
        #expect(GenerationCensus.take(entries: entries, engine: engine, graceSeconds: 0, now: 1e9).first { !$0.inForce }?.files == n)
        #expect(took < .seconds(20), "\(took) for \(n) files")
    }
}
