import Foundation
import KVCFormat
import Testing
@testable import KVScrubDaemon

/// The files-by-verdict count in `DaemonMetrics.render`, in process on a
/// `DaemonState`: the state keeps it as it changes (`IndexCensus`), so each
/// change that moves it (an arrival, a removal, a verdict, an ABI that makes a
/// file unusable) must show in the very next scrape. (The exposition as a whole is checked with
/// Prometheus' own parser and promtool in the end-to-end tests.)
@Suite struct DaemonMetricsTests {
    static func entry(_ i: Int, version: UInt8 = 2, size: UInt64 = 1000) -> CacheEntry {
        let sha = String(repeating: String(format: "%02x", i % 256), count: 20)
        let header = KVCHeader(version: version, quantBits: 4, reason: .cold, modelID: 1, tokens: 1, ctxSize: 4096,
                               createdAt: 1, lastUsed: 1, payloadBytes: 100, textBytes: 4)
        return CacheEntry(sha: sha, header: header, fileSize: size, identity: FileIdentity(device: 1, inode: UInt64(i)), unusable: nil)
    }

    /// The value of one `kvscrubd_files` or `kvscrubd_bytes` series in the exposition text.
    static func value(_ text: String, _ family: String, verdict: String, version: String) -> Double? {
        let prefix = "\(family){verdict=\"\(verdict)\",version=\"\(version)\"} "
        return text.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Double($0.dropFirst(prefix.count)) }
    }

    @Test func eachChange_showsInTheNextScrape_andNothingElseMovesTheCount() {
        let settings = DaemonSettings(config: DaemonConfig())
        let index = PartState(IndexState()), scrub = PartState(ScrubState()), counts = PartState(CounterState())
        let metrics = DaemonMetrics()
        func render() -> String { metrics.render(settings: settings, index: index, scrub: scrub, counts: counts) }
        let a = Self.entry(1), b = Self.entry(2), c = Self.entry(3, version: 1, size: 500)
        index.change { s in for e in [a, b, c] { s.index.insert(e) } }
        var text = render()
        #expect(Self.value(text, "kvscrubd_files", verdict: "unverified", version: "2") == 2)
        #expect(Self.value(text, "kvscrubd_files", verdict: "unverified", version: "1") == 1)
        #expect(Self.value(text, "kvscrubd_bytes", verdict: "unverified", version: "1") == 500)

        // A verdict alone (the index as it was): the next scrape counts it.
        index.change { $0.index.setVerdict(a.fileName, .ok) }
        text = render()
        #expect(Self.value(text, "kvscrubd_files", verdict: "ok", version: "2") == 1)
        #expect(Self.value(text, "kvscrubd_files", verdict: "unverified", version: "2") == 1)

        index.change { $0.index.setVerdict(b.fileName, .corrupt) }
        text = render()
        #expect(Self.value(text, "kvscrubd_files", verdict: "corrupt", version: "2") == 1)
        #expect(Self.value(text, "kvscrubd_files", verdict: "unverified", version: "2") == 0)

        // Unchanged: the same figures again.
        #expect(render().split(separator: "\n").filter { $0.hasPrefix("kvscrubd_files") }
                == text.split(separator: "\n").filter { $0.hasPrefix("kvscrubd_files") })

        // A file that goes, and one the engine cannot use.
        index.change { s in
            s.index.remove(b.fileName)
            var unusable = c
            unusable.unusable = "payload ABI 7"
            s.index.insert(unusable)
        }
        text = render()
        #expect(Self.value(text, "kvscrubd_files", verdict: "corrupt", version: "2") == 0)
        #expect(Self.value(text, "kvscrubd_files", verdict: "incompatible", version: "1") == 1)
        #expect(Self.value(text, "kvscrubd_files", verdict: "unverified", version: "1") == 0)
        #expect(Self.value(text, "kvscrubd_files", verdict: "ok", version: "2") == 1)
    }

    /// The census, kept change by change, against a count from scratch after every step of a long random
    /// run of every change the daemon makes: arrivals (new and replacing), removals, verdicts, records
    /// (matching and stale), a new engine generation, a whole new index, records loaded at start-up.
    @Test func theKeptCensus_equalsACountFromScratch_afterEveryChange() {
        var rng = SystemRandomNumberGenerator()
        var seed = UInt64.random(in: 0...UInt64.max, using: &rng)
        func next(_ n: Int) -> Int {
            seed &+= 0x9E37_79B9_7F4A_7C15
            var z = seed
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return Int((z ^ (z >> 31)) % UInt64(n))
        }
        let start = seed
        var s = CacheIndex()
        func entry(_ i: Int) -> CacheEntry {
            var e = Self.entry(i, version: next(3) == 0 ? 1 : 2, size: UInt64(100 + next(5000)))
            e.identity = FileIdentity(device: 1, inode: UInt64(next(4)))  // a few lives per name
            if next(8) == 0 { e.header = nil }
            if next(8) == 0 { e.unusable = "payload ABI 7" }
            return e
        }
        let verdicts: [Verdict] = Verdict.allCases
        for step in 0..<5000 {
            let name = Self.entry(next(40)).fileName
            switch next(20) {
            case 0..<6: s.insert(entry(next(40)))
            case 6..<9: s.remove(name)
            case 9..<14: s.setVerdict(name, verdicts[next(verdicts.count)])
            case 14..<18:
                if let e = s[name], let h = e.header {
                    let key = next(2) == 0 ? RecordedChecksum.Key(identity: e.identity, header: h)
                                           : RecordedChecksum.Key(device: 9, inode: 9, textBytes: 1, payloadBytes: 1, createdAt: 1)
                    s.setRecord(name, RecordedChecksum(key: key, textCRC: 1, payloadCRC: 2, recordedAt: 0))
                }
            case 18:
                s.setEngineABI(EngineABI.Resolution(generation: next(2) == 0 ? .ds4e8e8779 : .pr146, source: "configured"))
            default:
                if next(4) == 0 { s.replace(with: (0..<next(30)).map { entry($0) }) }
                else { s.loadRecords(s.records.filter { _ in next(2) == 0 }) }
            }
            let fresh = IndexCensus(index: s.entries, verdicts: s.verdicts, isRecorded: s.isRecorded)
            guard s.census == fresh else {
                Issue.record("step \(step) (seed \(start)): kept \(s.census), counted \(fresh)")
                return
            }
        }
        #expect(s.census.checksums.inFile + s.census.checksums.recorded + s.census.checksums.notYetRecorded
                == s.entries.values.filter { $0.header != nil }.count)
    }
}
