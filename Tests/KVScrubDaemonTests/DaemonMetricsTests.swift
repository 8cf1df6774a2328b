import Foundation
import KVCFormat
import Testing
@testable import KVScrubDaemon

/// The files-by-verdict count in `DaemonMetrics.render`, in process on a
/// `DaemonState`: it is kept between scrapes, so each change that moves it
/// (an arrival, a removal, a verdict, an ABI that makes a file unusable) must
/// show in the very next scrape. (The exposition as a whole is checked with
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
        let state = DaemonState(config: DaemonConfig())
        let metrics = DaemonMetrics()
        let a = Self.entry(1), b = Self.entry(2), c = Self.entry(3, version: 1, size: 500)
        state.with { s in for e in [a, b, c] { s.index[e.fileName] = e } }
        var text = metrics.render(state: state)
        #expect(Self.value(text, "kvscrubd_files", verdict: "unverified", version: "2") == 2)
        #expect(Self.value(text, "kvscrubd_files", verdict: "unverified", version: "1") == 1)
        #expect(Self.value(text, "kvscrubd_bytes", verdict: "unverified", version: "1") == 500)

        // A verdict alone (the index as it was): the next scrape counts it.
        state.with { $0.verdicts[a.fileName] = .ok }
        text = metrics.render(state: state)
        #expect(Self.value(text, "kvscrubd_files", verdict: "ok", version: "2") == 1)
        #expect(Self.value(text, "kvscrubd_files", verdict: "unverified", version: "2") == 1)

        state.with { $0.verdicts[b.fileName] = .corrupt }
        text = metrics.render(state: state)
        #expect(Self.value(text, "kvscrubd_files", verdict: "corrupt", version: "2") == 1)
        #expect(Self.value(text, "kvscrubd_files", verdict: "unverified", version: "2") == 0)

        // Unchanged: the same figures again.
        #expect(metrics.render(state: state).split(separator: "\n").filter { $0.hasPrefix("kvscrubd_files") }
                == text.split(separator: "\n").filter { $0.hasPrefix("kvscrubd_files") })

        // A file that goes, and one the engine cannot use.
        state.with { s in
            s.index[b.fileName] = nil
            var unusable = c
            unusable.unusable = "payload ABI 7"
            s.index[c.fileName] = unusable
        }
        text = metrics.render(state: state)
        #expect(Self.value(text, "kvscrubd_files", verdict: "corrupt", version: "2") == 0)
        #expect(Self.value(text, "kvscrubd_files", verdict: "incompatible", version: "1") == 1)
        #expect(Self.value(text, "kvscrubd_files", verdict: "unverified", version: "1") == 0)
        #expect(Self.value(text, "kvscrubd_files", verdict: "ok", version: "2") == 1)
    }
}
