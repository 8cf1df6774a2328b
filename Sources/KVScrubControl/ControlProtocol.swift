import Foundation
import KVCFormat

/// The control socket's protocol: one JSON object per line each way.
/// Request: `{"cmd":"status"}`; reply: `{"ok":true,"status":{...}}` or
/// `{"ok":false,"error":"..."}`. Unknown commands and malformed lines get an
/// error reply and the connection stays usable.
///
/// Commands: read-only `ping`, `status`, `entries`, `explain` (with `name`),
/// `metrics`, `scrub-status`, `history` (with `since`, `cause`, `limit`); changing (see `AccessPolicy`) `scrub-start`,
/// `scrub-pause`, `scrub-resume`, `scrub-cancel`, `scrub-now` (with
/// `files`), `brake-release`, `brake-restore`, `reload`, `evict-now`.
public struct ControlRequest: Codable, Sendable {
    public var cmd: String
    public var files: [String]?
    public var name: String?
    /// `history`: Unix time of the oldest event wanted, a cause (corrupt, budget, free-space,
    /// incompatible), and at most how many events (newest first).
    public var since: Double?
    public var cause: String?
    public var limit: Int?
    public init(cmd: String, files: [String]? = nil, name: String? = nil, since: Double? = nil, cause: String? = nil, limit: Int? = nil) {
        self.cmd = cmd; self.files = files; self.name = name; self.since = since; self.cause = cause; self.limit = limit
    }
}

public struct ControlResponse: Codable, Sendable {
    public var ok: Bool
    public var error: String?
    /// What a changing command did, in a sentence.
    public var message: String?
    public var status: StatusReport?
    public var entries: [EntryReport]?
    public var scrub: StatusReport.Scrub?
    public var verdicts: [FileVerdict]?
    public var explanation: Explanation?
    /// Prometheus text exposition format.
    public var metrics: String?
    /// With `entries`: the payload ABI the entries were judged against.
    public var engineAbi: EngineABI.Resolution?
    /// `history`: removals, quarantines and evictions, newest first.
    public var history: [HistoryEvent]?
    /// What a changing command did, in numbers (scrub control, brake-release, evict-now, reload).
    public var outcome: CommandOutcome?

    public init(ok: Bool, error: String? = nil, message: String? = nil, status: StatusReport? = nil, entries: [EntryReport]? = nil,
                scrub: StatusReport.Scrub? = nil, verdicts: [FileVerdict]? = nil, explanation: Explanation? = nil, metrics: String? = nil) {
        self.ok = ok; self.error = error; self.message = message; self.status = status; self.entries = entries
        self.scrub = scrub; self.verdicts = verdicts; self.explanation = explanation; self.metrics = metrics
    }

    public static func failure(_ message: String) -> ControlResponse { ControlResponse(ok: false, error: message) }

    /// The socket's JSON, which the CLI's `--json` prints as well: snake_case keys, sorted, slashes as they are.
    public static func encoder() -> JSONEncoder {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        enc.keyEncodingStrategy = .convertToSnakeCase
        return enc
    }

    /// The reply as the socket sends it: one line of the socket's JSON, with its newline.
    public var line: Data {
        var data = (try? Self.encoder().encode(self)) ?? Data(#"{"ok":false,"error":"cannot encode reply"}"#.utf8)
        data.append(UInt8(ascii: "\n"))
        return data
    }
}

/// A changing command's result as data, for scripts (`--json`): the state it
/// left behind rather than only a sentence.
public struct CommandOutcome: Codable, Sendable {
    /// The scrub after the command (scrub start, pause, resume, cancel); `passStartedAt`
    /// names the pass, which `scrub wait` follows to its end.
    public var scrub: StatusReport.Scrub?
    /// The removal brake after `brake-release`.
    public var brake: StatusReport.Brake?
    public var eviction: Eviction?
    public var reload: Reload?
    /// `brake-restore`: the files put back in the cache, and those left in quarantine (with why).
    public var restored: [String]?
    public var leftInQuarantine: [String]?

    public init(scrub: StatusReport.Scrub? = nil, brake: StatusReport.Brake? = nil, eviction: Eviction? = nil, reload: Reload? = nil,
                restored: [String]? = nil, leftInQuarantine: [String]? = nil) {
        self.scrub = scrub; self.brake = brake; self.eviction = eviction; self.reload = reload
        self.restored = restored; self.leftInQuarantine = leftInQuarantine
    }

    /// `evict-now`: what this evaluation evicted, and where the cache stands after it.
    public struct Eviction: Codable, Sendable {
        public var evictedFiles: UInt64
        public var evictedBytes: UInt64
        public var files: Int
        public var bytes: UInt64
        /// 0: no budget.
        public var budgetBytes: UInt64

        public init(evictedFiles: UInt64, evictedBytes: UInt64, files: Int, bytes: UInt64, budgetBytes: UInt64) {
            self.evictedFiles = evictedFiles
            self.evictedBytes = evictedBytes
            self.files = files
            self.bytes = bytes
            self.budgetBytes = budgetBytes
        }
    }

    /// `reload`: the settings a reload cannot change (kept until a restart).
    public struct Reload: Codable, Sendable {
        public var keptUntilRestart: [String]

        public init(keptUntilRestart: [String]) {
            self.keptUntilRestart = keptUntilRestart
        }
    }
}

/// One file's result from `scrub now`.
public struct FileVerdict: Codable, Sendable {
    /// The verifier's verdict, or why there is none.
    public enum Outcome: String, Codable, Sendable, CaseIterable {
        case ok, corrupt, incompatible, ignored
        /// No such file in the cache directory (or no cache directory).
        case missing
        /// The file could not be read (permissions, I/O).
        case unreadable

        /// The verifier's verdict as an outcome.
        public init(_ verdict: Verdict) {
            switch verdict {
            case .ok: self = .ok
            case .corrupt: self = .corrupt
            case .incompatible: self = .incompatible
            case .ignored: self = .ignored
            }
        }
    }

    /// What became of the file.
    public enum Disposition: String, Codable, Sendable, CaseIterable {
        /// Left where it is: sound, or not proven corrupt, or held back (dry run, the brake, a failed removal).
        case kept
        /// Proven corrupt and unlinked.
        case removed
        /// Proven corrupt and moved to the quarantine directory.
        case quarantined
        /// Corrupt at a first look; the second look is still to come.
        case pending
        /// Nothing was done: no such file, not a checkpoint, or it went meanwhile.
        case none
    }

    /// What the daemon did, and the sentence that says so.
    public struct Action: Sendable, Equatable, CustomStringConvertible {
        public var disposition: Disposition
        /// For the operator: "kept", "removed", "quarantined to /path", "kept (dry run)", ...
        public var description: String

        public init(_ disposition: Disposition, _ description: String? = nil) {
            self.disposition = disposition
            self.description = description ?? disposition.rawValue
        }
    }

    public var file: String
    public var verdict: Outcome
    public var checksums: String?
    public var problems: [String]
    /// What the daemon did, in a sentence: kept, removed, quarantined to ..., kept (dry run), ...
    public var action: String
    /// What the daemon did (nil from a daemon before this field: the sentence alone says it).
    public var disposition: Disposition?

    public init(file: String, verdict: Outcome, checksums: String? = nil, problems: [String], action: Action) {
        self.file = file
        self.verdict = verdict
        self.checksums = checksums
        self.problems = problems
        self.action = action.description
        disposition = action.disposition
    }
}

/// Why a file sits where it does in the eviction order (`explain`).
public struct Explanation: Codable, Sendable {
    public var entry: EntryReport
    public var files: Int
    /// Bytes of the files evicted before this one, and whether the budget would reach it now.
    public var bytesBefore: UInt64
    public var overBudgetBytes: UInt64
    public var wouldBeEvictedNow: Bool
    public var reasons: [String]

    public init(entry: EntryReport, files: Int, bytesBefore: UInt64, overBudgetBytes: UInt64, wouldBeEvictedNow: Bool, reasons: [String]) {
        self.entry = entry
        self.files = files
        self.bytesBefore = bytesBefore
        self.overBudgetBytes = overBudgetBytes
        self.wouldBeEvictedNow = wouldBeEvictedNow
        self.reasons = reasons
    }
}

public struct StatusReport: Codable, Sendable {
    public struct Scrub: Codable, Sendable {
        public var active: Bool
        public var filesDone: Int
        public var filesTotal: Int
        public var bytesDone: UInt64
        public var bytesTotal: UInt64
        public var rateBytesPerSecond: Double
        public var limitMBps: Double
        public var etaSeconds: Double?
        public var current: String?
        public var passStartedAt: Double?
        public var nextPassAt: Double?
        public var lastPass: PassSummary?
        public var paused: Bool = false
        /// Seconds this pass has spent paused (not counted in its ETA or rate).
        public var pausedSeconds: Double = 0
        public var lastCancelledAt: Double?
        /// Files found corrupt so far in the pass in progress.
        public var corruptFound: Int?

        public init(active: Bool, filesDone: Int, filesTotal: Int, bytesDone: UInt64, bytesTotal: UInt64, rateBytesPerSecond: Double, limitMBps: Double, etaSeconds: Double? = nil, current: String? = nil, passStartedAt: Double? = nil, nextPassAt: Double? = nil, lastPass: PassSummary? = nil, paused: Bool = false, pausedSeconds: Double = 0, lastCancelledAt: Double? = nil, corruptFound: Int? = nil) {
            self.active = active
            self.filesDone = filesDone
            self.filesTotal = filesTotal
            self.bytesDone = bytesDone
            self.bytesTotal = bytesTotal
            self.rateBytesPerSecond = rateBytesPerSecond
            self.limitMBps = limitMBps
            self.etaSeconds = etaSeconds
            self.current = current
            self.passStartedAt = passStartedAt
            self.nextPassAt = nextPassAt
            self.lastPass = lastPass
            self.paused = paused
            self.pausedSeconds = pausedSeconds
            self.lastCancelledAt = lastCancelledAt
            self.corruptFound = corruptFound
        }
    }

    /// Evicted checkpoints the engine wrote again within the regret window.
    public struct Regret: Codable, Sendable {
        public var windowHours: Double
        public var lastDay: Int
        public var lastDayBytes: UInt64
        public var total: UInt64
        /// A sentence for the operator, when the regrets say the budget is too small.
        public var advice: String?

        public init(windowHours: Double, lastDay: Int, lastDayBytes: UInt64, total: UInt64, advice: String? = nil) {
            self.windowHours = windowHours
            self.lastDay = lastDay
            self.lastDayBytes = lastDayBytes
            self.total = total
            self.advice = advice
        }
    }

    public var state: String
    public var pid: Int32
    public var version: String
    public var uptimeSeconds: Double
    public var cacheDir: String
    public var files: Int
    public var bytes: UInt64
    public var budgetBytes: UInt64
    public var freeBytes: UInt64?
    public var filesystemBytes: UInt64?
    public var dryRun: Bool
    public var incompatibleFiles: Int
    public var scrub: Scrub
    public var counters: DaemonCounters
    public var lastErrors: [String]
    public var regret: Regret?
    /// The payload ABI in force and how it was chosen; the setting (auto or a number).
    /// (`Abi`, not `ABI`: the socket's JSON is snake_case, `engine_abi`, and must round-trip.)
    public var engineAbi: EngineABI.Resolution?
    public var engineAbiSetting: String?
    public var brake: Brake?
    /// Files found corrupt waiting for the removal rule's second look.
    public var pendingRemovals: Int?
    public var settleSeconds: Double?
    /// What protects the files' contents: their own CRC32C (v2), checksums kvscrubd recorded (v1), or not yet anything.
    public var checksums: Checksums?
    /// Each engine generation present: files, bytes, newest activity, and when a superseded one is reclaimed.
    public var generations: [GenerationCensus.Report]?
    /// `superseded_grace_hours` (nil: off) and `orphan_temp_minutes` (nil: off).
    public var supersededGraceHours: Double?
    public var orphanTempMinutes: Double?
    /// What the engine deleted itself in the last day (this run).
    public var engineDeletedLastDay: EngineDeletions?

    public struct EngineDeletions: Codable, Sendable, Equatable {
        public var files: UInt64
        public var bytes: UInt64

        public init(files: UInt64, bytes: UInt64) {
            self.files = files
            self.bytes = bytes
        }
    }

    public struct Checksums: Codable, Sendable, Equatable {
        /// v2 files: CRC32C in the file itself.
        public var inFile: Int
        /// v1 files with a recorded checksum that matches them.
        public var recorded: Int
        /// v1 files not recorded yet (recorded at their next verification).
        public var notYetRecorded: Int
        public init(inFile: Int, recorded: Int, notYetRecorded: Int) {
            self.inFile = inFile; self.recorded = recorded; self.notYetRecorded = notYetRecorded
        }
    }

    /// The removal brake (`RemovalBrake`).
    public struct Brake: Codable, Sendable {
        public var engaged: Bool
        public var engagedAt: Double?
        public var reason: String?
        public var heldBack: Int
        public var limit: String
        public var corruptLastHour: Int
        public var verifiedLastHour: Int
        public var quarantine: String
        /// `removal_brake_action`: keep (files stay where they are) or quarantine.
        public var action: String?

        public init(engaged: Bool, engagedAt: Double? = nil, reason: String? = nil, heldBack: Int, limit: String, corruptLastHour: Int, verifiedLastHour: Int, quarantine: String, action: String? = nil) {
            self.engaged = engaged
            self.engagedAt = engagedAt
            self.reason = reason
            self.heldBack = heldBack
            self.limit = limit
            self.corruptLastHour = corruptLastHour
            self.verifiedLastHour = verifiedLastHour
            self.quarantine = quarantine
            self.action = action
        }
    }

    public init(state: String, pid: Int32, version: String, uptimeSeconds: Double, cacheDir: String, files: Int, bytes: UInt64, budgetBytes: UInt64, freeBytes: UInt64? = nil, filesystemBytes: UInt64? = nil, dryRun: Bool, incompatibleFiles: Int, scrub: Scrub, counters: DaemonCounters, lastErrors: [String], regret: Regret? = nil, engineAbi: EngineABI.Resolution? = nil, engineAbiSetting: String? = nil, brake: Brake? = nil, pendingRemovals: Int? = nil, settleSeconds: Double? = nil, checksums: Checksums? = nil, generations: [GenerationCensus.Report]? = nil, supersededGraceHours: Double? = nil, orphanTempMinutes: Double? = nil, engineDeletedLastDay: EngineDeletions? = nil) {
        self.state = state
        self.pid = pid
        self.version = version
        self.uptimeSeconds = uptimeSeconds
        self.cacheDir = cacheDir
        self.files = files
        self.bytes = bytes
        self.budgetBytes = budgetBytes
        self.freeBytes = freeBytes
        self.filesystemBytes = filesystemBytes
        self.dryRun = dryRun
        self.incompatibleFiles = incompatibleFiles
        self.scrub = scrub
        self.counters = counters
        self.lastErrors = lastErrors
        self.regret = regret
        self.engineAbi = engineAbi
        self.engineAbiSetting = engineAbiSetting
        self.brake = brake
        self.pendingRemovals = pendingRemovals
        self.settleSeconds = settleSeconds
        self.checksums = checksums
        self.generations = generations
        self.supersededGraceHours = supersededGraceHours
        self.orphanTempMinutes = orphanTempMinutes
        self.engineDeletedLastDay = engineDeletedLastDay
    }
}

public struct EntryReport: Codable, Sendable {
    public var rank: Int
    public var name: String
    public var version: UInt8?
    public var reason: String?
    public var tokens: UInt32?
    public var hits: UInt32?
    public var size: UInt64
    public var lastUsed: UInt64?
    public var score: Double
    public var effectiveHits: Double
    public var idleSeconds: UInt64?
    public var tokensPerByte: Double
    public var anchorFactor: Double
    public var unusable: String?
    /// A continued checkpoint whose text a longer one in the directory extends.
    public var superseded: Bool?
    /// The last scrub verdict this run (nil: not verified since the daemon started).
    public var verdict: String?
    /// What protects its contents: crc32c (v2), recorded (v1 with a recorded checksum), none (v1, not yet).
    public var checksums: String?

    public init(rank: Int, name: String, version: UInt8? = nil, reason: String? = nil, tokens: UInt32? = nil, hits: UInt32? = nil, size: UInt64, lastUsed: UInt64? = nil, score: Double, effectiveHits: Double, idleSeconds: UInt64? = nil, tokensPerByte: Double, anchorFactor: Double, unusable: String? = nil, superseded: Bool? = nil, verdict: String? = nil, checksums: String? = nil) {
        self.rank = rank
        self.name = name
        self.version = version
        self.reason = reason
        self.tokens = tokens
        self.hits = hits
        self.size = size
        self.lastUsed = lastUsed
        self.score = score
        self.effectiveHits = effectiveHits
        self.idleSeconds = idleSeconds
        self.tokensPerByte = tokensPerByte
        self.anchorFactor = anchorFactor
        self.unusable = unusable
        self.superseded = superseded
        self.verdict = verdict
        self.checksums = checksums
    }
}

public enum DaemonVersion {
    public static let string = "0.1.0"
}
