import CLinux
import Foundation
import KVCFormat
import KVScrubControl
import KVScrubSystemd
import Logging
import NIOConcurrencyHelpers
#if canImport(Glibc)
import Glibc
#endif

/// The control handler: answers the control socket's requests. It owns the
/// `status` reply cache and the admin group's members; it reads the other
/// parts' states (the index, the scrub, the counters, the settings) and asks
/// the parts themselves for what changes them (the scrubber's pause, resume,
/// cancel, brake release and `scrub now`; the maintainer's `evict-now`; the
/// reloader). Who may ask is `AccessPolicy`'s; what is answered from memory
/// is answered on the socket's event loop, what blocks runs off it
/// (`OffLoop`). The replies' contents are `DaemonReports`'.
final class ControlHandler: Sendable {
    let settings: DaemonSettings
    let index: PartState<IndexState>
    let counts: PartState<CounterState>
    /// What the replies say (read-only views of the parts).
    let reports: DaemonReports
    let scrubber: Scrubber
    let maintainer: IndexMaintainer
    let reloader: ConfigReloader
    let database: StateDatabase
    let notifier: SystemdNotifier
    let events: EventRecorder
    /// The last encoded `status` reply and when it was made (`statusReply`).
    /// The reply's bytes are kept as `[UInt8]`, not `Data`: the fuzzer once reported the cached `Data`
    /// as a leak (fuzz-control, `{"cmd":"status"}`, once in some twenty CI runs), most likely because
    /// Data's enum packs its case into spare bits of the storage pointer, which LeakSanitizer does
    /// not recognise as a pointer; an Array's buffer reference is a plain one.
    let statusCache = NIOLockedValueBox<(at: ContinuousClock.Instant, generation: UInt64, line: [UInt8])?>(nil)
    static let statusCacheTime = Duration.milliseconds(50)
    /// The admin group's members, for the connections kept for privileged peers; refreshed off the loop.
    let adminMembers = NIOLockedValueBox<AdminGroupMembers?>(nil)
    /// The daemon's own user, asked once: `getuid` is a system call, and every request's access check needs it.
    let daemonUID = getuid()

    init(reports: DaemonReports, scrubber: Scrubber, maintainer: IndexMaintainer, reloader: ConfigReloader, database: StateDatabase,
         notifier: SystemdNotifier, events: EventRecorder) {
        self.reports = reports
        settings = reports.settings
        index = reports.index
        counts = reports.counts
        self.scrubber = scrubber
        self.maintainer = maintainer
        self.reloader = reloader
        self.database = database
        self.notifier = notifier
        self.events = events
    }

    var clock: any DaemonClock { settings.clock }

    /// Whether `peer` is served from the connections kept for privileged peers.
    func isPrivileged(_ peer: AccessPolicy.Peer) -> Bool {
        AccessPolicy(daemonUID: daemonUID, adminGroup: nil).isPrivileged(peer) || (adminMembers.withLockedValue { $0 }?.contains(peer) ?? false)
    }

    /// A reload is done (SIGHUP or `reload`, taken or not): the admin group is read again, the next
    /// `status` is made afresh, and systemd is told the daemon is ready again. Blocks (the group database).
    func settingsReloaded() {
        refreshAdminMembers()
        statusCache.withLockedValue { $0 = nil }
        notifier.ready(status: reports.statusLine())
    }

    /// Answers from memory on the socket's event loop; the requests that read
    /// files or the database, parse the config file, or wait for the
    /// maintenance loop (scrub now, history, reload, evict now) run later, off it.
    func handle(_ request: ControlRequest, peer: AccessPolicy.Peer?) -> ControlReply {
        guard let cmd = ControlCommand(rawValue: request.cmd) else {
            return .now(.failure("unknown command '\(request.cmd)'; known: \(ControlCommand.publicNames)"))
        }
        let policy = AccessPolicy(daemonUID: daemonUID, adminGroup: settings.setting(\.adminGroup))
        guard let decision = policy.decideWithoutGroupLookup(cmd, peer: peer) else {
            // The admin group's membership is in the group database, which may block (NSS): off the loop.
            return .later { [self] in
                let decision = await OffLoop.run { policy.decide(cmd, peer: peer) }
                if case .refused(let why) = decision { return refused(cmd, peer, why) }
                return cmd.blocks ? answered(cmd, await handleSlow(cmd, request)) : answered(cmd, handleFromMemory(cmd, request))
            }
        }
        if case .refused(let why) = decision { return .now(refused(cmd, peer, why)) }
        if cmd == .status { return .encoded(statusReply()) }
        if cmd.blocks { return .later { [self] in answered(cmd, await handleSlow(cmd, request)) } }
        return .now(answered(cmd, handleFromMemory(cmd, request)))
    }

    /// A command's reply, once it has done its work: whatever a changing command did shows in the very next status.
    private func answered(_ cmd: ControlCommand, _ reply: ControlResponse) -> ControlResponse {
        if cmd.access == .change { statusCache.withLockedValue { $0 = nil } }
        return reply
    }

    /// `status`, encoded at most once per `statusCacheTime` while the index stays as it was (monitoring
    /// polls it from many clients at once): a file that arrives or goes, an eviction or a removal shows
    /// in the next reply, as does whatever a changing command did; only progress figures (a scrub's
    /// bytes, the rate) may be that much old.
    func statusReply() -> Data {
        let now = ContinuousClock.now
        let generation = index.read { $0.index.generation }
        if let c = statusCache.withLockedValue({ $0 }), c.generation == generation, now - c.at < Self.statusCacheTime { return Data(c.line) }
        let line = ControlResponse(ok: true, status: reports.status()).line
        statusCache.withLockedValue { $0 = (now, generation, [UInt8](line)) }
        return line
    }

    func refused(_ cmd: ControlCommand, _ peer: AccessPolicy.Peer?, _ why: String) -> ControlResponse {
        events.record(DaemonEvent(.refused, .notice, "request refused", ["cmd": "\(cmd.rawValue)", "uid": "\(peer.map { String($0.uid) } ?? "?")"]))
        return .failure(why)
    }

    /// The commands answered from memory, on the socket's event loop.
    func handleFromMemory(_ cmd: ControlCommand, _ request: ControlRequest) -> ControlResponse {
        switch cmd {
        case .ping: return ControlResponse(ok: true)
        case .status: return ControlResponse(ok: true, status: reports.status())
        case .entries:
            var r = ControlResponse(ok: true, entries: reports.entries())
            r.engineAbi = index.read { $0.index.engineABI }
            return r
        case .explain:
            guard let name = request.name, !name.isEmpty else { return .failure("explain needs a file: {\"cmd\":\"explain\",\"name\":\"<sha>\"}") }
            return reports.explain(name).map { ControlResponse(ok: true, explanation: $0) } ?? .failure("no checkpoint \(name) in the index")
        case .scrubStatus: return ControlResponse(ok: true, scrub: reports.status().scrub)
        case .scrubStart:
            do {
                let started = try scrubber.startNow()
                var r = scrubReply(started.message)
                // The pass this request started, by its start time, even when it has ended already (a small
                // cache, no rate limit): `scrub start --wait` follows that pass, and would otherwise find
                // none running and exit 0 before the second looks at what it found.
                r.outcome?.scrub?.passStartedAt = started.startedAt
                return r
            } catch { return .failure(error.description) }
        case .scrubPause: return scrubReply(scrubber.pause())
        case .scrubResume: return scrubReply(scrubber.resume())
        case .scrubCancel:
            do { return scrubReply(try scrubber.cancel()) } catch { return .failure(error.description) }
        case .brakeRelease:
            var r = ControlResponse(ok: true, message: scrubber.releaseBrake())
            r.outcome = CommandOutcome(brake: reports.status().brake)
            return r
        case .scrubNow, .evictNow, .history, .reload, .metrics, .brakeRestore:
            return .failure("'\(cmd.rawValue)' is not answered from memory")
        }
    }

    /// Reads the admin group's members again, from the group database (which may block: call it off every loop).
    func refreshAdminMembers() {
        let members = settings.config.adminGroup.flatMap(AdminGroupMembers.resolve)
        adminMembers.withLockedValue { $0 = members }
    }

    /// A scrub control command's sentence, with the scrub it left behind.
    func scrubReply(_ message: String) -> ControlResponse {
        var r = ControlResponse(ok: true, message: message)
        r.outcome = CommandOutcome(scrub: reports.status().scrub)
        return r
    }

    /// The commands that block (files, SQLite, the config file, the maintenance loop), off the event loop.
    func handleSlow(_ cmd: ControlCommand, _ request: ControlRequest) async -> ControlResponse {
        switch cmd {
        case .metrics:
            return await OffLoop.run { [self] in ControlResponse(ok: true, metrics: reports.renderMetrics()) }
        case .reload:
            // Reads and parses the config file.
            let result = await OffLoop.run { [self] in
                let result = reloader.reload()
                settingsReloaded()
                return result
            }
            switch result {
            case .failure(let error):
                return .failure("the configuration did not load; the previous settings stay: \(error.description)")
            case .success(let kept):
                var r = ControlResponse(ok: true, message: "configuration reloaded" +
                                        (kept.isEmpty ? "" : "; \(kept.joined(separator: ", ")) change only on restart (kept as they were)"))
                r.outcome = CommandOutcome(reload: .init(keptUntilRestart: kept))
                return r
            }
        case .history:
            let cause = request.cause.flatMap(HistoryEvent.Cause.init(rawValue:))
            if let name = request.cause, cause == nil {
                return .failure("unknown cause '\(name)'; causes: \(HistoryEvent.causes.joined(separator: ", "))")
            }
            let limit = min(max(request.limit ?? 1000, 0), 10_000)
            // SQLite reads block.
            let result = await OffLoop.run { [database] in
                Result { try database.history(since: request.since, cause: cause, limit: limit) }
            }
            switch result {
            case .success(let events):
                var r = ControlResponse(ok: true)
                r.history = events
                return r
            case .failure(let error):
                return .failure("the history cannot be read: \(error)")
            }
        case .brakeRestore:
            // Renames or copies files: off the loop.
            let (message, restored, left) = await OffLoop.run { [scrubber] in scrubber.releaseBrakeAndRestore() }
            var r = ControlResponse(ok: true, message: message)
            r.outcome = CommandOutcome(brake: reports.status().brake, restored: restored, leftInQuarantine: left)
            return r
        case .scrubNow:
            guard let files = request.files, !files.isEmpty else { return .failure("scrub now needs at least one file") }
            guard files.count <= 10_000 else { return .failure("at most 10000 files per request") }
            // Reads whole files.
            let verdicts = await OffLoop.run { [scrubber] in scrubber.verifyNow(files) }
            return ControlResponse(ok: true, verdicts: verdicts)
        case .evictNow:
            // Counted before asking: the maintenance thread may evict before this line would run again.
            let before = counts.read { ($0.counters.evictedFiles, $0.counters.evictedBytes) }
            guard await maintainer.evictNow(timeout: .seconds(10)) else {
                return .failure("the maintenance loop did not get to it within 10 s; see 'kvscrubd status'")
            }
            let config = settings.config
            let e = index.read { i in
                counts.read { c in
                    CommandOutcome.Eviction(evictedFiles: c.counters.evictedFiles - before.0, evictedBytes: c.counters.evictedBytes - before.1,
                                            files: i.index.count, bytes: i.index.totalBytes, budgetBytes: config.budgetMB > 0 ? config.budgetBytes : 0)
                }
            }
            var r = ControlResponse(ok: true, message: "evaluated: \(e.evictedFiles) files evicted (\(ByteText.short(e.evictedBytes))); " +
                                    "\(e.files) files, \(ByteText.short(e.bytes)) in the cache" +
                                    (e.budgetBytes > 0 ? " (budget \(ByteText.short(e.budgetBytes)))" : " (no budget)"))
            r.outcome = CommandOutcome(eviction: e)
            return r
        case .ping, .status, .entries, .explain, .scrubStatus, .scrubStart, .scrubPause, .scrubResume, .scrubCancel,
             .brakeRelease:
            return handleFromMemory(cmd, request)
        }
    }
}
