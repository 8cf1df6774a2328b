import KVCFormat
import Logging

/// Something the daemon reports: what kind it is (its stable KVSCRUB_EVENT
/// name and, for the ones an operator searches for, its journal MESSAGE_ID),
/// how loud, the sentence and its details, and what it counts.
///
/// Why one type for all of them: a counter that the log does not explain, or
/// a log line no counter reflects, makes `status`, `/metrics` and the journal
/// disagree. Each part says what happened by recording one `DaemonEvent` with
/// the `EventRecorder`; the counting rules live here, next to the names, so a
/// new event cannot be logged without deciding what it counts.
public struct DaemonEvent: Sendable {
    /// Every event name the daemon logs. The raw values are the KVSCRUB_EVENT
    /// field and the `event=` key of the stderr format: never rename one.
    public enum Kind: String, CaseIterable, Sendable {
        case ready, stopping, reloaded
        case reloadFailed = "reload-failed"
        case refused
        case inotifyEvent = "inotify-event"
        case indexFailed = "index-failed"
        case engineABI = "engine-abi"
        case firstSight = "first-sight"
        case rescan, rescanned
        case rescanFailed = "rescan-failed"
        case directoryGone = "directory-gone", directoryBack = "directory-back"
        case directoryWatchFailed = "directory-watch-failed"
        case stateSaveFailed = "state-save-failed", stateSaveRecovered = "state-save-recovered"
        case stateDBDamaged = "state-db-damaged", stateDBUnavailable = "state-db-unavailable"
        case stateMigrated = "state-migrated"
        case removalRecovered = "removal-recovered"
        case budgetExceeded = "budget-exceeded"
        case oversizedArrival = "oversized-arrival"
        case evicted
        case wouldEvict = "would-evict"
        case evictFailed = "evict-failed"
        case evictionSummary = "eviction-summary", wouldEvictSummary = "would-evict-summary"
        case regret
        case scrubPassStarted = "scrub-pass-started", scrubPassFinished = "scrub-pass-finished"
        case scrubPaused = "scrub-paused", scrubResumed = "scrub-resumed", scrubCancelled = "scrub-cancelled"
        case scrubError = "scrub-error"
        case checksumRecorded = "checksum-recorded"
        case corruptFound = "corrupt-found"
        case corruptSuspected = "corrupt-suspected"
        case corruptUnconfirmed = "corrupt-unconfirmed"
        case corruptRemoved = "corrupt-removed"
        case corruptKept = "corrupt-kept"
        case wouldRemove = "would-remove"
        case removeFailed = "remove-failed"
        case quarantineFailed = "quarantine-failed"
        case removalBrakeEngaged = "removal-brake-engaged", removalBrakeReleased = "removal-brake-released"
        case quarantineRestored = "quarantine-restored"
        case supersededReclaimed = "superseded-reclaimed"
        case orphanRemoved = "orphan-temporary-removed"
        case engineDeleted = "engine-deleted"

        /// Stable MESSAGE_IDs (128-bit, as `journalctl --new-id128` makes them) for
        /// the events an operator may want to find; packaging/kvscrubd.catalog
        /// explains each one. Never change an id once released: saved searches use it.
        var messageID: String? {
            switch self {
            case .corruptFound: "4f1c8d2a9b6e4e0f8a3d5c7b1e2f9a60"
            case .corruptRemoved: "7a2e5c9d1f3b4a8e9c0d2b4f6a8e1c31"
            case .evicted: "c3b1e7f9a2d44c6e8b0a1f3d5e7c9b12"
            case .scrubPassFinished: "1e9d7c5b3a2f4e6d8c0b9a7f5e3d1c23"
            case .budgetExceeded: "9b8a7c6d5e4f4a3b9c2d1e0f8a7b6c54"
            case .regret: "66257d03c5044d388335df09b6fbf60d"
            case .removalBrakeEngaged: "3e8f198528904ae69f3c6abd09d365cd"
            case .corruptKept: "ccb74004027a4318a603fa7ffe849721"
            case .stateDBDamaged: "b555359180d445df91b4ccec8a2b1f61"
            case .removeFailed: "f530bacc59d04ab5991e0fbd0b54960d"
            case .evictFailed: "7d5dee888599497aa5c6da33ef7fa974"
            case .directoryGone: "d92b9dd018d54b4b94aa4944c4e1c254"
            case .directoryWatchFailed: "65675f26a373405aba7ae79721edb652"
            case .reloadFailed: "942867d96e3447d488a77ecb7d768e35"
            case .scrubError: "094491447d6141308fc570ab3b55f75d"
            case .indexFailed: "48395a704ff04e73a614a696293a263c"
            case .quarantineFailed: "f1723b025ee845a9843fb28b70a26351"
            case .stateSaveFailed: "6b7cd70a5420443c9cf5f942e93a63a8"
            case .stateDBUnavailable: "0bacb32987ee47c5b1ff2b593785b167"
            case .supersededReclaimed: "e783d2310e3f4c24b9ccb487589e4f64"
            case .orphanRemoved: "5a0e32cae5334cd8a8b1b43cf1dedadb"
            default: nil
            }
        }

        /// The MESSAGE_ID for a KVSCRUB_EVENT name (what the journal handler is given).
        public static func messageID(forEvent name: String) -> String? { Kind(rawValue: name)?.messageID }
    }

    /// What an event counts, in the counters (`CounterState`).
    enum Tally: Sendable {
        case nothing
        /// Also kept among the last errors `status` shows.
        case error(String)
        case inotifyEvent
        case rescan
        case regret
        case evicted(Evictor.Cause, bytes: UInt64)
        case passCompleted
        /// A corrupt file settled: removed, quarantined (also removed from the cache) or kept.
        /// `region`: where its first problem lies (nil: none named), what the counters are kept by.
        case corrupt(region: Region?, removed: Bool, quarantined: Bool)
        case corruptUnconfirmed
        /// A temporary file an engine left behind, removed.
        case orphanRemoved(bytes: UInt64)
        /// A checkpoint the engine deleted itself (seen as an unlink by inotify).
        case engineDeleted(bytes: UInt64, at: Double)
    }

    let kind: Kind
    let level: Logger.Level
    let message: String
    let details: Logger.Metadata
    let tally: Tally

    init(_ kind: Kind, _ level: Logger.Level, _ message: String, _ details: Logger.Metadata = [:], counts tally: Tally = .nothing) {
        self.kind = kind
        self.level = level
        self.message = message
        self.details = details
        self.tally = tally
    }

    /// The log record's metadata: the details and the event's name.
    var metadata: Logger.Metadata { details.merging(["event": .string(kind.rawValue)]) { $1 } }

    /// Applies the tally to the counters (called by the recorder under the counters' lock). What a
    /// corrupt file counts for the pass in progress, the scrubber counts in its own state, together.
    func count(in s: inout CounterState, now: Double) {
        switch tally {
        case .nothing: break
        case .error(let message): s.noteError(message, now: now)
        case .inotifyEvent: s.counters.inotifyEvents += 1
        case .rescan: s.counters.rescans += 1
        case .regret: s.counters.regrets = (s.counters.regrets ?? 0) + 1
        case .evicted(let cause, let bytes):
            s.counters.evictedBytes += bytes
            switch cause {
            case .budget: s.counters.evictedBudget += 1
            case .freeSpace: s.counters.evictedFreeSpace += 1
            case .incompatible: s.counters.evictedIncompatible += 1
            case .superseded: s.counters.evictedSuperseded = (s.counters.evictedSuperseded ?? 0) + 1
            }
        case .passCompleted: s.counters.passesCompleted += 1
        case .corrupt(let region, let removed, let quarantined):
            s.counters.countCorrupt(region: region?.rawValue ?? "unknown", removed: removed)
            if quarantined { s.counters.corruptQuarantined = (s.counters.corruptQuarantined ?? 0) + 1 }
        case .corruptUnconfirmed: s.counters.corruptUnconfirmed = (s.counters.corruptUnconfirmed ?? 0) + 1
        case .orphanRemoved(let bytes):
            s.counters.orphansRemoved = (s.counters.orphansRemoved ?? 0) + 1
            s.counters.orphanBytesRemoved = (s.counters.orphanBytesRemoved ?? 0) + bytes
        case .engineDeleted(let bytes, let at):
            s.counters.engineDeletedFiles = (s.counters.engineDeletedFiles ?? 0) + 1
            s.counters.engineDeletedBytes = (s.counters.engineDeletedBytes ?? 0) + bytes
            s.engineDeletions.add(bytes: bytes, at: at)
        }
    }
}
