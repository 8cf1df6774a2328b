import KVScrubControl
import KVScrubSystemd
import Logging
import NIOPosix
import ServiceLifecycle
import UnixSignals

/// The composition root: builds the parts and runs them, as services of one
/// swift-service-lifecycle `ServiceGroup`, until SIGTERM or SIGINT. Each part
/// owns its state and is the only one to change it (docs/ARCHITECTURE.md):
///
/// - the index maintainer (`IndexMaintainer`, its `IndexState`): inotify
///   events into the index, eviction, the directory going and coming back,
///   on a thread of its own;
/// - the scrubber (`Scrubber`, its `ScrubState`), on a thread of its own;
/// - the event recorder (`EventRecorder`, its `CounterState`);
/// - the control handler (`ControlHandler`), served by the control socket
///   (`ControlServer`) and the optional metrics listener on one SwiftNIO event
///   loop, each bound in its service (`ListeningService`);
/// - the state database (`StateDatabase`, fed by `StateSaver`): saved and
///   closed on the way out;
/// - the lifecycle, here: the settings (`DaemonSettings`), readiness once the
///   servers listen, SIGHUP (`ConfigReloader`; a bad file keeps the old
///   settings), and saying it stops.
///
/// The group shuts them down in the reverse order, each once the one after it
/// has ended: the scrub read in progress is abandoned, the maintenance loop
/// ends, progress is saved, the sockets close, and `run` returns within about
/// a second. The blocking loops run on threads of their own (`ThreadService`).
public final class Daemon: Sendable {
    let settings: DaemonSettings
    let logger: Logger
    let events: EventRecorder
    let database: StateDatabase
    let saver: StateSaver
    let scrubber: Scrubber
    let maintainer: IndexMaintainer
    let reloader: ConfigReloader
    let control: ControlHandler
    let notifier = SystemdNotifier()
    let faults = TestFaults()
    /// Ends the scrub: a flag of its own, so the scrub's thread ends first and the maintenance loop after it.
    let scrubStopping = StopFlag()

    /// `clock`: the time of day for every part (a test's `ManualClock`, or the system's).
    public init(config: DaemonConfig, configFile: String?, flags: [(String, String)], logger: Logger,
                logLevels: LogLevelSwitch? = nil, clock: any DaemonClock = SystemClock()) throws {
        let settings = DaemonSettings(config: config, clock: clock)
        let index = PartState(IndexState()), scrub = PartState(ScrubState()), counts = PartState(CounterState())
        let events = EventRecorder(counts: counts, clock: clock, logger: logger)
        let database = StateDatabase(settings: settings, events: events, faults: faults,
                                     snapshot: { StateSaver.snapshot(index: index, scrub: scrub, counts: counts) })
        let saver = StateSaver(database: database, index: index, scrub: scrub, counts: counts, clock: clock)
        let scrubber = Scrubber(state: scrub, index: index, settings: settings, events: events, database: database, saver: saver,
                                faults: faults, stopping: scrubStopping, logger: logger)
        let reports = DaemonReports(settings: settings, index: index, scrub: scrub, counts: counts, metrics: DaemonMetrics())
        let maintainer = try IndexMaintainer(state: index, settings: settings, events: events, scrubber: scrubber, saver: saver,
                                             notifier: notifier, faults: faults, logger: logger,
                                             history: { database.enqueue([.history($0)]) }, statusLine: { reports.statusLine() })
        let reloader = ConfigReloader(settings: settings, configFile: configFile, flags: flags, logLevels: logLevels, maintainer: maintainer,
                                      scrubber: scrubber, notifier: notifier, events: events, logger: logger)
        self.settings = settings
        self.logger = logger
        self.events = events
        self.database = database
        self.saver = saver
        self.scrubber = scrubber
        self.maintainer = maintainer
        self.reloader = reloader
        control = ControlHandler(reports: reports, scrubber: scrubber, maintainer: maintainer, reloader: reloader, database: database,
                                 notifier: notifier, events: events)
    }

    /// A control request, as the socket hands it over. Behind `@_spi(Fuzzing)`: the control fuzz target
    /// (Fuzz/, a package of its own) feeds it arbitrary requests; it is not in the library's public API.
    @_spi(Fuzzing) public func handle(_ request: ControlRequest, peer: AccessPolicy.Peer?) -> ControlReply {
        control.handle(request, peer: peer)
    }

    public func run() async throws {
        // Trapped before anything slow: a stop asked for during start-up is a clean stop once it is
        // over, and a SIGHUP then does not end the process (the group below takes over from here).
        let early = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup)
        let stopAsked = StopFlag()
        let earlyWatch = Task { for await signal in early where signal != .sighup { stopAsked.set() } }
        defer { earlyWatch.cancel() }
        // Test-only (KVSCRUBD_TEST_FAULTS=1): SIGUSR2 hangs the maintenance loop, so the watchdog tests see
        // the watchdog fire. Trapped here, before READY=1; a packaged daemon leaves SIGUSR2 alone.
        let hangSignals = faults.enabled ? await UnixSignalsSequence(trapping: .sigusr2) : nil
        let hangWatch = hangSignals.map { signals in Task { [maintainer] in for await _ in signals { maintainer.hang() } } }
        defer { hangWatch?.cancel() }
        let config = settings.config
        try await openStateAndDirectory()

        await OffLoop.run { [control] in control.refreshAdminMembers() }
        if stopAsked.isSet {
            events.record(DaemonEvent(.stopping, .notice, "stopping: asked to during start-up"))
            await saveAndCloseState()
            return
        }
        let loop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { loop.shutdownGracefully { _ in } }
        // Readiness (READY=1) waits for every server to listen.
        let serversBound = StartLatch(count: config.metricsListen == nil ? 1 : 2)
        let controlSocket = ListeningService.controlSocket(config, on: loop, handler: control, logger: logger, bound: serversBound)
        let metricsListener = config.metricsListen.map { [control, logger] listen in
            ListeningService.metricsListener(listen, on: loop, logger: logger, bound: serversBound) { control.reports.renderMetrics() }
        }

        // The parts as services. Started in this order; on SIGTERM or SIGINT shut down in the reverse
        // order, each once the one after it has ended: the lifecycle (reports stopping), the scrub and
        // the maintenance threads, the state (saved and closed), then the metrics and control servers.
        // The servers bind in their own `run`: one that cannot fails the group, and every part stops.
        let servers = [ServiceGroupConfiguration.ServiceConfiguration(service: controlSocket)]
            + (metricsListener.map { [.init(service: $0)] } ?? [])
        let logger = self.logger
        let parts: [ServiceGroupConfiguration.ServiceConfiguration] = [
            Self.onShutdown("state") { [self] in await saveAndCloseState() },
            // The scrub below the engine's CPU priority (besides the idle I/O class), but not so far that a busy
            // machine starves it: at nice 19 it got about 1.5% of a contended CPU, and in the test suite's
            // parallel load a corrupt file waited over 90 s for its pass (5 s alone). The index stays at the
            // engine's priority: it keeps the budget (at nice 5, 50,000 arrivals in the 100,000-file benchmark
            // took 4.1 s to be indexed; 1.6 s in the run before, at nice 0).
            .init(service: ThreadService(description: "kvscrubd-watch", nice: 0, logger: logger, body: { [maintainer] in maintainer.maintain() },
                                         stop: { [maintainer] in maintainer.stopping.set(); maintainer.wake() })),
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
        saver.persist(force: true)
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
        settings.enter(.running)
        let config = settings.config
        let (files, bytes) = maintainer.state.read { ($0.index.count, $0.index.totalBytes) }
        events.record(DaemonEvent(.ready, .notice, "ready", ["cache_dir": "\(config.cacheDir)", "files": "\(files)",
                                                             "bytes": "\(bytes)", "socket": "\(config.socketPath)"]))
        notifier.ready(status: control.reports.statusLine())
        for await _ in hangups.cancelOnGracefulShutdown() {
            // Parses a file: off the cooperative pool.
            await OffLoop.run { [reloader, control] in
                _ = reloader.reload()
                control.settingsReloaded()
            }
        }
        events.record(DaemonEvent(.stopping, .notice, "stopping"))
        notifier.stopping()
        settings.enter(.stopping)
    }

    /// Opens the state database beside the scan of the cache directory (SQLite may wait on the disk
    /// while the scan reads headers), gives each part back what it owns, then puts the scan in the
    /// index and looks again at what a restart interrupted. (A function of its own: the scan's
    /// entries are let go once they are in the index.)
    private func openStateAndDirectory() async throws {
        let config = settings.config
        StateStore(directory: config.stateDir).removeStaleTemporaries()
        async let opened = OffLoop.run { [database] in database.open() }
        let scanned = try maintainer.scanDirectory(config.cacheDir, create: true)
        let pendingAtStart = restoreState(await opened)
        maintainer.use(scanned)
        // Files whose removal a restart interrupted before the second look: looked at afresh.
        for name in pendingAtStart where maintainer.state.read({ $0.index[name] != nil }) {
            scrubber.fileArrived(name)
        }
        maintainer.recordOnFirstSight()
    }

    /// Says what opening the state database did (migrating state.json, replacing a damaged
    /// database) and gives each part back what it owns. Returns the files whose second look a
    /// restart interrupted.
    func restoreState(_ opening: StateDatabase.Opening) -> [String] {
        let snap = opening.reported(to: events, logger: logger, database: database, stateDir: settings.config.stateDir)
        maintainer.restore(records: snap.records, recentEvictions: snap.recentEvictions, regrets: snap.core?.regretLog ?? [])
        if let core = snap.core {
            scrubber.restore(progress: core.scrub, brake: core.brake)
            events.restore(core.counters)
        }
        return snap.core?.pendingRemovals ?? []
    }
}
