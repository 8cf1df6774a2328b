import CLinux
import Foundation
import KVCFormat
import KVScrubSystemd
import Logging
import NIOPosix
import ServiceLifecycle
import Synchronization
import UnixSignals
#if canImport(Glibc)
import Glibc
#endif

/// Wires the parts together and runs them, as services of one
/// swift-service-lifecycle `ServiceGroup`, until SIGTERM or SIGINT:
///
/// - the control socket (`ControlServer`) and the optional metrics listener,
///   on one SwiftNIO event loop, each bound in its service (`ListeningService`);
/// - the state (`StateDatabase`): saved and closed on the way out;
/// - the maintenance thread: inotify events into the index, eviction on
///   arrivals and on the evict timer, surviving the directory's removal;
/// - the scrub thread (`Scrubber`);
/// - the lifecycle: readiness once the servers listen, SIGHUP (reload the
///   config file; a bad file keeps the old settings), and saying it stops.
///
/// The group shuts them down in the reverse order, each once the one after it
/// has ended: the scrub read in progress is abandoned, the maintenance loop
/// ends, progress is saved, the sockets close, and `run` returns within about
/// a second. The blocking loops run on threads of their own (`ThreadService`).
public final class Daemon: Sendable {
    let state: DaemonState
    let configFile: String?
    let flags: [(String, String)]
    let logger: Logger
    /// Where this part reports what happened (logged and counted in one place).
    let events: EventRecorder
    /// The handlers' level, which `reload` sets from log_level (nil: levels are fixed, as in the fuzz target).
    let logLevels: LogLevelSwitch?
    /// Ends the maintenance loop (its service's graceful shutdown sets it).
    let stopping = StopFlag()
    /// Ends the scrub: a flag of its own, so the scrub's thread ends first and the maintenance loop after it.
    let scrubStopping = StopFlag()
    let database: StateDatabase
    let scrubber: Scrubber
    let evictor: Evictor
    let watcher: DirectoryWatcher
    let notifier = SystemdNotifier()
    let metrics = DaemonMetrics()
    /// `evict-now` requests: asked and answered counts, so a request waits for an evaluation that began after it.
    let evictAsked = Mutex(0)
    let evictDone = Mutex(0)
    let directory = Mutex<CacheDirectory?>(nil)
    /// Test-only fault: when set, the maintenance loop hangs, so a test can see the watchdog fire.
    /// Reachable only when the daemon runs with KVSCRUBD_TEST_FAULTS=1.
    let hangMaintenance = StopFlag()
    let faults = TestFaults()
    /// The last encoded `status` reply and when it was made (`statusReply`).
    /// The reply's bytes are kept as `[UInt8]`, not `Data`: the fuzzer once reported the cached `Data`
    /// as a leak (fuzz-control, `{"cmd":"status"}`, once in some twenty CI runs), most likely because
    /// Data's enum packs its case into spare bits of the storage pointer, which LeakSanitizer does
    /// not recognise as a pointer; an Array's buffer reference is a plain one.
    let statusCache = Mutex<(at: ContinuousClock.Instant, generation: UInt64, line: [UInt8])?>(nil)
    static let statusCacheTime = Duration.milliseconds(50)
    /// The admin group's members, for the connections kept for privileged peers; refreshed off the loop.
    let adminMembers = Mutex<AdminGroupMembers?>(nil)
    var testFaults: Bool { faults.enabled }
    /// The daemon's own user, asked once: `getuid` is a system call, and every request's access check needs it.
    let daemonUID = getuid()

    /// `clock`: the time of day for every part (a test's `ManualClock`, or the system's).
    public init(config: DaemonConfig, configFile: String?, flags: [(String, String)], logger: Logger,
                logLevels: LogLevelSwitch? = nil, clock: any DaemonClock = SystemClock()) throws {
        self.logLevels = logLevels
        state = DaemonState(config: config, clock: clock)
        self.configFile = configFile
        self.flags = flags
        self.logger = logger
        self.events = EventRecorder(state: state, logger: logger)
        let state = self.state, events = self.events
        database = StateDatabase(
            directory: config.stateDir, clock: clock, faults: faults, historyDays: { state.config.historyDays },
            snapshot: { state.with { StateDatabase.Snapshot(core: $0.core, records: $0.records, recentEvictions: $0.recentEvictions) } },
            report: { what, error in
                events.record(DaemonEvent(.stateSaveFailed, .error, "cannot save state", ["what": "\(what)", "error": "\(error)"],
                                          counts: .error("\(what): \(error)")))
            },
            replaced: { to, error in
                events.record(DaemonEvent(.stateDBDamaged, .error,
                                          "the state database was damaged; moved aside and a new one started (recorded checksums are taken again)",
                                          ["path": "\(config.stateDir)/state.sqlite", "moved_to": "\(to)", "error": "\(error)"],
                                          counts: .error("state database damaged, moved to \(to): \(error)")))
            },
            recovered: { attempts in
                events.record(DaemonEvent(.stateSaveRecovered, .notice, "the state database is written again", ["failed_attempts": "\(attempts)"]))
            })
        scrubber = Scrubber(state: state, database: database, faults: faults, stopping: scrubStopping, logger: logger)
        evictor = Evictor(state: state, logger: logger) { [database] in
            database.enqueue([.history($0)])
        }
        watcher = try DirectoryWatcher()
    }

    public func run() async throws {
        // Trapped before anything slow: a stop asked for during start-up is a clean stop once it is
        // over, and a SIGHUP then does not end the process (the group below takes over from here).
        let early = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup)
        let stopAsked = StopFlag()
        let earlyWatch = Task { for await signal in early where signal != .sighup { stopAsked.set() } }
        defer { earlyWatch.cancel() }
        let config = state.config
        StateStore(directory: config.stateDir).removeStaleTemporaries()
        let pendingAtStart = restoreState()
        try openDirectory(config.cacheDir, create: true)
        // Files whose removal a restart interrupted before the second look: looked at afresh.
        for name in pendingAtStart where state.with({ $0.index[name] != nil }) {
            scrubber.fileArrived(name)
        }
        recordOnFirstSight()

        await Self.offLoop { [self] in refreshAdminMembers() }
        if stopAsked.isSet {
            events.record(DaemonEvent(.stopping, .notice, "stopping: asked to during start-up"))
            await saveAndCloseState()
            return
        }
        let loop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { loop.shutdownGracefully { _ in } }
        let privileged: @Sendable (AccessPolicy.Peer) -> Bool = { [self] peer in
            AccessPolicy(daemonUID: daemonUID, adminGroup: nil).isPrivileged(peer) || (adminMembers.withLock { $0 }?.contains(peer) ?? false)
        }
        let handler: ControlServer.Handler = { [self] request, peer in handle(request, peer: peer) }
        let logger = self.logger, metrics = self.metrics, state = self.state
        // Readiness (READY=1) waits for every server to listen.
        let serversBound = StartLatch(count: config.metricsListen == nil ? 1 : 2)
        let control = ListeningService(description: "control socket", start: {
            let server: ControlServer
            if let fd = SocketActivation.listeningUnixSocket() {
                server = try await ControlServer.adopt(descriptor: fd, path: config.socketPath, on: loop, privileged: privileged, handler: handler)
                logger.info("serving the socket systemd passed", metadata: ["fd": "\(fd)"])
            } else {
                server = try await ControlServer.start(path: config.socketPath, mode: config.socketMode, group: config.socketGroup,
                                                       on: loop, privileged: privileged, handler: handler)
            }
            return { await server.stop() }
        }, bound: serversBound)
        let metricsListener = config.metricsListen.map { listen in
            ListeningService(description: "metrics listener", start: {
                let server = try await MetricsHTTPServer.start(listen: listen, on: loop, logger: logger) { metrics.render(state: state) }
                logger.info("serving /metrics over HTTP", metadata: ["listen": "\(listen)"])
                return { await server.stop() }
            }, bound: serversBound)
        }

        // The parts as services. Started in this order; on SIGTERM or SIGINT shut down in the reverse
        // order, each once the one after it has ended: the lifecycle (reports stopping), the scrub and
        // the maintenance threads, the state (saved and closed), then the metrics and control servers.
        // The servers bind in their own `run`: one that cannot fails the group, and every part stops.
        let servers = [ServiceGroupConfiguration.ServiceConfiguration(service: control)]
            + (metricsListener.map { [.init(service: $0)] } ?? [])
        let parts: [ServiceGroupConfiguration.ServiceConfiguration] = [
            Self.onShutdown("state") { [self] in await saveAndCloseState() },
            // The scrub below the engine's CPU priority (besides the idle I/O class), but not so far that a busy
            // machine starves it: at nice 19 it got about 1.5% of a contended CPU, and in the test suite's
            // parallel load a corrupt file waited over 90 s for its pass (5 s alone). The index stays at the
            // engine's priority: it keeps the budget (at nice 5, 50,000 arrivals in the 100,000-file benchmark
            // took 4.1 s to be indexed; 1.6 s in the run before, at nice 0).
            .init(service: ThreadService(description: "kvscrubd-watch", nice: 0, logger: logger, body: { [self] in maintain() },
                                         stop: { [self] in stopping.set(); watcher.wake() })),
            .init(service: ThreadService(description: "kvscrubd-scrub", nice: 10, logger: logger, body: { [self] in scrubber.run() },
                                         stop: { [self] in scrubStopping.set(); scrubber.wake() })),
            .init(service: ClosureService { [self] in await lifecycle(once: serversBound) }, serviceName: "lifecycle"),
        ]
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: servers + parts, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    /// A part with nothing to run, only something to do when the group shuts it down.
    private static func onShutdown(_ name: String, _ body: @escaping @Sendable () async -> Void) -> ServiceGroupConfiguration.ServiceConfiguration {
        .init(service: ClosureService {
            try? await gracefulShutdown()
            await body()
        }, serviceName: name)
    }

    /// The last of the progress and counters to the state database, which is then closed.
    private func saveAndCloseState() async {
        scrubber.persist(force: true)
        await database.close()
    }

    /// Says ready once the servers listen, reloads on SIGHUP until the group shuts down, then says stopping.
    private func lifecycle(once serversBound: StartLatch) async {
        // Trapped before READY=1: a SIGHUP sent as soon as the daemon says it is ready (systemctl reload
        // right after start) is a reload. Trapped after, it went to the start-up trap and was dropped
        // (seen in SystemdNotifyTests once the suite ran its tests side by side).
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await serversBound.wait()
        guard !Task.isCancelled else { return } // a server could not bind: the group is stopping
        events.record { s in
            s.phase = .running
            return DaemonEvent(.ready, .notice, "ready", ["cache_dir": "\(s.config.cacheDir)", "files": "\(s.index.count)",
                                                          "bytes": "\(s.totalBytes)", "socket": "\(s.config.socketPath)"])
        }
        notifier.ready(status: statusLine())
        for await _ in hangups.cancelOnGracefulShutdown() {
            // Parses a file: off the cooperative pool.
            _ = await Self.offLoop { [self] in reload() }
        }
        events.record(DaemonEvent(.stopping, .notice, "stopping"))
        notifier.stopping()
        state.with { $0.phase = .stopping }
    }

    /// Opens the state database (migrating state.json, replacing a damaged
    /// database) and puts what it holds back in memory. Returns the files whose
    /// second look a restart interrupted.
    func restoreState() -> [String] {
        let opening = database.open()
        if let why = opening.unavailable {
            events.record(DaemonEvent(.stateDBUnavailable, .error, "cannot open the state database; running without it, and trying again at every save",
                                      ["path": "\(database.path)", "error": "\(why)"], counts: .error("open state database \(database.path): \(why)")))
        }
        if let from = opening.migratedFrom {
            events.record(DaemonEvent(.stateMigrated, .notice, "migrated the state file into the state database",
                                      ["from": "\(from)", "to": "\(database.path)"]))
        }
        if let why = opening.legacyUnreadable {
            logger.warning("state file unreadable; starting with fresh counters (kept as state.json.unreadable)",
                           metadata: ["path": "\(config.stateDir)/state.json", "error": "\(why)"])
        }
        let snap = opening.snapshot
        state.with { s in
            if let core = snap.core {
                s.scrub = core.scrub
                s.counters = core.counters
                s.regretLog = core.regretLog
                s.brake = core.brake
                s.counters.inotifyEvents = 0
                s.counters.rescans = 0
                s.counters.errors = 0
            }
            s.recentEvictions = snap.recentEvictions
            s.loadRecords(snap.records)
            // Which pass found each pending file is not kept across a restart: the files are looked at
            // afresh (below), and the last pass's summary owes no more second looks.
            if s.scrub.lastPass?.pendingSecondLooks != nil { s.scrub.lastPass?.pendingSecondLooks = 0 }
        }
        if let scrub = snap.core?.scrub, scrub.passStartedAt != nil {
            logger.info("resuming the scrub pass", metadata: ["after": "\(scrub.cursor ?? "(start)")", "files_done": "\(scrub.filesDone)"])
        }
        return snap.core?.pendingRemovals ?? []
    }

    var config: DaemonConfig { state.config }

    /// v1 files seen at start-up without a record that matches them (a new
    /// daemon, a lost database, files written while it was stopped) are
    /// verified, and so recorded, soon: a few as new arrivals, many by
    /// starting a pass now rather than waiting for the next one.
    func recordOnFirstSight() {
        // The census counts them: a cache with none (v2 only, or every v1 file recorded) is not walked.
        let unrecorded = state.with { s in
            s.checksumProtection.notYetRecorded == 0 ? [] : s.index.keys.filter { s.isRecorded($0) == false }
        }
        guard !unrecorded.isEmpty else { return }
        let passActive = state.with { $0.scrub.passStartedAt != nil }
        if unrecorded.count <= 1000 {
            for name in unrecorded { scrubber.fileArrived(name) }
        } else if !passActive {
            scrubber.startPass(now: state.clock.now())
        }
        events.record(DaemonEvent(.firstSight, .info, "v1 checkpoints without a recorded checksum yet; verifying them to record one", [
            "files": "\(unrecorded.count)",
            "how": "\(unrecorded.count <= 1000 ? "as new arrivals" : (passActive ? "by the pass in progress" : "by a pass started now"))"]))
    }

    /// Names the calling thread as `ps -L`, `top -H` and /proc show it (at most 15 bytes).
    static func nameThread(_ name: String) {
        _ = kvs_set_thread_name(name)
    }

    /// Opens (and watches, then scans) the cache directory. Watch first: an
    /// event during the scan is then seen twice rather than not at all.
    func openDirectory(_ path: String, create: Bool) throws {
        if create && !FileManager.default.fileExists(atPath: path) {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o750])
            logger.notice("created the cache directory", metadata: ["path": "\(path)"])
        }
        try watcher.watch(path: path)
        let dir = try CacheDirectory(path: path)
        let clock = ContinuousClock()
        let t0 = clock.now
        let scan = try dir.scan(engineABI: state.config.engine)
        // Records of files a crash left under a private name: the index drops them, the recovery needs them.
        let leftoverRecords = state.with { s in
            s.records.filter { r in scan.takenAway.contains { CheckpointName.originalName(ofTakenAway: $0) == r.key } }
        }
        state.with { $0.replaceIndex(scan.entries, judgedUnder: scan.engineABI) }
        events.record(DaemonEvent(.engineABI, .info, "engine generation in force", ["generation": "\(scan.engineABI.description)"]))
        for e in scan.errors {
            events.record(DaemonEvent(.indexFailed, .error, "cannot read a checkpoint's header; it counts against the budget and goes first",
                                      ["error": "\(e)"], counts: .error("\(e)")))
        }
        recoverTakenAway(scan.takenAway, in: dir, records: leftoverRecords)
        directory.withLock { $0 = dir }
        scrubber.use(directory: dir)
        logger.info("indexed the cache directory", metadata: ["files": "\(scan.entries.count)", "ignored": "\(scan.ignored.count)",
                                                            "seconds": "\(clock.now - t0)"])
    }

    /// Settles the private names a crash left in the middle of a removal:
    /// each is verified again, then removed (proven corrupt) or put back.
    func recoverTakenAway(_ names: [String], in dir: CacheDirectory, records: [String: RecordedChecksum]) {
        guard !names.isEmpty else { return }
        let config = state.config
        var disposal = CacheDirectory.Disposal.unlink
        let brake = state.with { $0.brake.engaged }
        if brake && config.removalBrakeAction == .keep {
            disposal = .keepInPlace(why: "held back by the removal brake")
        } else if let target = brake ? config.brakeQuarantineDir : config.quarantineDir,
                  let q = try? CacheDirectory.Quarantine.open(creating: target) {
            disposal = .quarantine(q)
        }
        for name in names {
            // With the original name's record: a v1 file taken away for a checksum mismatch is judged as it was.
            let original = CheckpointName.originalName(ofTakenAway: name) ?? name
            let verifier = state.with { Verifier(engine: $0.engineABI.generation, recorded: records[original]) }
            let outcome = dir.recoverTakenAway(name, verifier: verifier, disposal: disposal)
            events.record(DaemonEvent(.removalRecovered, .notice, "settled a removal a restart interrupted",
                                      ["file": "\(name)", "outcome": "\(outcome)"]))
            if case .putBack(let original) = outcome, let e = try? dir.entry(named: original, engine: state.with({ $0.engineABI.generation })) {
                state.with { s in
                    s.insert(e)
                    if let r = records[original] { s.setRecord(original, r) }
                }
            }
        }
    }
}
