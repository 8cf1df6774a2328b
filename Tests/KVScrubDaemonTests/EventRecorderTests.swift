import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing
@testable import KVScrubDaemon

/// The event recorder: each event logged once with its name, counted by its
/// tally under the state lock with the caller's change, and the only code in
/// the daemon's parts that moves a counter.
@Suite struct EventRecorderTests {
    /// A log handler that keeps what it is given.
    struct Capture: LogHandler {
        let lines: NIOLockedValueBox<[(Logger.Level, String, Logger.Metadata)]>
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            lines.withLockedValue { $0.append((event.level, event.message.description, event.metadata ?? [:])) }
        }
    }

    static func recorder() -> (EventRecorder, PartState<CounterState>, NIOLockedValueBox<[(Logger.Level, String, Logger.Metadata)]>) {
        let lines = NIOLockedValueBox<[(Logger.Level, String, Logger.Metadata)]>([])
        let logger = Logger(label: "test") { _ in Capture(lines: lines) }
        let counts = PartState(CounterState())
        return (EventRecorder(counts: counts, clock: SystemClock(), logger: logger), counts, lines)
    }

    @Test func eachEvent_isLoggedOnce_withItsName_level_andDetails() {
        let (events, _, lines) = Self.recorder()
        events.record(DaemonEvent(.evicted, .info, "evicted", ["file": "a.kv", "bytes": "10"], counts: .evicted(.budget, bytes: 10)))
        let got = lines.withLockedValue { $0 }
        #expect(got.count == 1)
        #expect(got.first?.0 == .info && got.first?.1 == "evicted")
        #expect(got.first?.2["event"] == "evicted" && got.first?.2["file"] == "a.kv" && got.first?.2["bytes"] == "10")
    }

    @Test func tallies_moveTheRightCounters() {
        let (events, counts, _) = Self.recorder()
        events.record(DaemonEvent(.evicted, .info, "evicted", counts: .evicted(.budget, bytes: 100)))
        events.record(DaemonEvent(.evicted, .info, "evicted", counts: .evicted(.freeSpace, bytes: 7)))
        events.record(DaemonEvent(.evicted, .info, "evicted", counts: .evicted(.incompatible, bytes: 3)))
        events.record(DaemonEvent(.corruptRemoved, .warning, "corrupt file removed", counts: .corrupt(region: .payload, removed: true, quarantined: false)))
        events.record(DaemonEvent(.corruptRemoved, .warning, "corrupt file moved to quarantine",
                                  counts: .corrupt(region: .payload, removed: true, quarantined: true)))
        events.record(DaemonEvent(.corruptKept, .warning, "corrupt file kept in place", counts: .corrupt(region: .header, removed: false, quarantined: false)))
        events.record(DaemonEvent(.corruptUnconfirmed, .info, "changed", counts: .corruptUnconfirmed))
        events.record(DaemonEvent(.regret, .notice, "regret", counts: .regret))
        events.record(DaemonEvent(.rescanned, .info, "rescanned", counts: .rescan))
        events.record(DaemonEvent(.inotifyEvent, .trace, "inotify event", counts: .inotifyEvent))
        events.record(DaemonEvent(.scrubPassFinished, .notice, "scrub pass finished", counts: .passCompleted))
        events.record(DaemonEvent(.scrubError, .error, "cannot verify", counts: .error("scrub x.kv: boom")))
        events.record(DaemonEvent(.ready, .notice, "ready"))
        let (c, errors) = counts.read { ($0.counters, $0.lastErrors) }
        #expect(c.evictedBudget == 1 && c.evictedFreeSpace == 1 && c.evictedIncompatible == 1 && c.evictedBytes == 110)
        #expect(c.corruptFound == 3 && c.corruptRemoved == 2 && c.corruptQuarantined == 1 && c.corruptUnconfirmed == 1)
        #expect(c.corruptFoundByRegion == ["payload": 2, "header": 1] && c.corruptRemovedByRegion == ["payload": 2])
        #expect(c.regrets == 1 && c.rescans == 1 && c.inotifyEvents == 1 && c.passesCompleted == 1 && c.errors == 1)
        #expect(errors.count == 1 && errors[0].hasSuffix("scrub x.kv: boom"))
    }

    /// What a corrupt file counts for the pass in progress is the scrubber's own (`ScrubState`), and
    /// counted only while a pass runs.
    @Test func aCorruptFile_countsInThePassInProgress_only() {
        var s = ScrubState()
        s.confirmedInPass(removed: true)
        #expect((s.progress.corruptFound, s.progress.removed) == (0, 0))
        s.progress.passStartedAt = 1
        s.confirmedInPass(removed: true)
        s.confirmedInPass(removed: false)
        #expect((s.progress.corruptFound, s.progress.removed) == (2, 1))
    }

    /// The change to a part's state and the count are made under its lock (the counters' taken inside
    /// it): a reader that takes the two in the same order never sees one without the other.
    @Test func theCallersChange_andTheCount_areOneStep() async {
        let (events, counts, _) = Self.recorder()
        let scrub = PartState(ScrubState())
        let n = 2000
        async let writer: Void = {
            for i in 0..<n {
                events.record(DaemonEvent(.evicted, .info, "evicted", counts: .evicted(.budget, bytes: 1)), changing: scrub) { $0.rate = Double(i + 1) }
            }
        }()
        var torn = 0
        for _ in 0..<n {
            let (count, mark) = scrub.read { s in counts.read { ($0.counters.evictedBudget, s.rate) } }
            if Double(count) != mark { torn += 1 }
        }
        await writer
        #expect(torn == 0)
        #expect(counts.read { $0.counters.evictedBudget } == UInt64(n))
    }

    @Test func underLock_buildsTheEventFromThePartsState_andNilRecordsNothing() {
        let (events, counts, lines) = Self.recorder()
        let scrub = PartState(ScrubState())
        scrub.change { $0.progress.filesDone = 42 }
        events.record(changing: scrub) { s in DaemonEvent(.scrubPassFinished, .notice, "done", ["files": "\(s.progress.filesDone)"], counts: .passCompleted) }
        events.record(changing: scrub) { _ in nil }
        #expect(lines.withLockedValue { $0.count } == 1)
        #expect(lines.withLockedValue { $0.first?.2["files"] } == "42")
        #expect(counts.read { $0.counters.passesCompleted } == 1)
    }

    @Test func messageIDs_areUnique_andLookedUpByEventName() {
        let ids = DaemonEvent.Kind.allCases.compactMap(\.messageID)
        #expect(Set(ids).count == ids.count && ids.count >= 19)
        #expect(DaemonEvent.Kind.messageID(forEvent: "corrupt-removed") == DaemonEvent.Kind.corruptRemoved.messageID)
        #expect(DaemonEvent.Kind.messageID(forEvent: "no-such-event") == nil)
        #expect(Set(DaemonEvent.Kind.allCases.map(\.rawValue)).count == DaemonEvent.Kind.allCases.count)
    }

    /// "Instead of counters spread across the parts": outside the event table, the counters' own
    /// arithmetic (`countCorrupt`) and the recorder (which
    /// also counts the bytes a scrub read, and takes back the saved counters at start-up), no daemon
    /// source moves a counter or notes an error by hand. Every file under Sources/KVScrubDaemon, in
    /// every part's folder (this once listed only the top folder, which has no sources since the split).
    @Test func noPartOfTheDaemon_movesACounter_butTheRecorder() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources/KVScrubDaemon").path
        let allowed: Set<String> = ["DaemonEvent.swift", "EventRecorder.swift", "DaemonCounters+Corrupt.swift"]
        let files = try FileManager.default.subpathsOfDirectory(atPath: dir).filter { $0.hasSuffix(".swift") }
        #expect(files.count > 30 && files.contains("Scrub/Scrubber.swift"), "\(files)")
        var offenders: [String] = []
        for file in files where !allowed.contains((file as NSString).lastPathComponent) {
            let text = try String(contentsOfFile: dir + "/" + file, encoding: .utf8)
            for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let moves = line.range(of: #"counters\.[a-zA-Z]+(ByRegion)?\s*(\+|-)?=[^=]"#, options: .regularExpression) != nil
                    || line.contains("noteError(") || line.contains("countCorrupt(")
                if moves {
                    offenders.append("\(file):\(i + 1): \(line.trimmingCharacters(in: .whitespaces))")
                }
            }
        }
        #expect(offenders.isEmpty, "\(offenders.joined(separator: "\n"))")
    }
}
