import CLinux
import Foundation
import KVCFormat
import Logging
import NIOPosix
import KVScrubSystemd
import UnixSignals
#if canImport(Glibc)
import Glibc
#endif

/// Wires the parts together and runs them until SIGTERM or SIGINT:
///
/// - the maintenance thread: inotify events into the index, eviction on
///   arrivals and on the evict timer, surviving the directory's removal;
/// - the scrub thread (`Scrubber`);
/// - the control socket (`ControlServer`) on one SwiftNIO event loop;
/// - this task: signals. SIGHUP reloads the config file (a bad file keeps the
///   old settings); SIGTERM/SIGINT stop: the scrub read in progress is
///   abandoned, progress is saved, and `run` returns within about a second.
public final class Daemon: Sendable {
    let state: DaemonState
    let configFile: String?
    let flags: [(String, String)]
    let logger: Logger
    /// The handlers' level, which `reload` sets from log_level (nil: levels are fixed, as in the fuzz target).
    let logLevels: LogLevelSwitch?
    let stopping = StopFlag()
    let database: StateDatabase
    let scrubber: Scrubber
    let evictor: Evictor
    let watcher: DirectoryWatcher
    let notifier = SystemdNotifier()
    let metrics = DaemonMetrics()
    /// `evict-now` requests: asked and answered counts, so a request waits for an evaluation that began after it.
    private let evictAsked = MutexBox(0)
    private let evictDone = MutexBox(0)
    private let directory = MutexBox<CacheDirectory?>(nil)
    /// Test-only fault: when set, the maintenance loop hangs, so a test can see the watchdog fire.
    /// Reachable only when the daemon runs with KVSCRUBD_TEST_FAULTS=1.
    private let hangMaintenance = StopFlag()
    private let faults = TestFaults()
    /// The admin group's members, for the connections kept for privileged peers; refreshed off the loop.
    private let adminMembers = MutexBox<AdminGroupMembers?>(nil)
    private var testFaults: Bool { faults.enabled }

    public init(config: DaemonConfig, configFile: String?, flags: [(String, String)], logger: Logger,
                logLevels: LogLevelSwitch? = nil) throws {
        self.logLevels = logLevels
        state = DaemonState(config: config)
        self.configFile = configFile
        self.flags = flags
        self.logger = logger
        let state = self.state
        database = StateDatabase(
            directory: config.stateDir, faults: faults, historyDays: { state.config.historyDays },
            snapshot: { state.with { StateDatabase.Snapshot(core: $0.core, records: $0.records, recentEvictions: $0.recentEvictions) } },
            report: { what, error in
                state.with { $0.noteError("\(what): \(error)") }
                logger.error("cannot save state", metadata: ["event": "state-save-failed", "what": "\(what)", "error": "\(error)"])
            },
            replaced: { to, error in
                state.with { $0.noteError("state database damaged, moved to \(to): \(error)") }
                logger.error("the state database was damaged; moved aside and a new one started (recorded checksums are taken again)",
                             metadata: ["event": "state-db-damaged", "path": "\(config.stateDir)/state.sqlite", "moved_to": "\(to)", "error": "\(error)"])
            },
            recovered: { attempts in
                logger.notice("the state database is written again", metadata: ["event": "state-save-recovered", "failed_attempts": "\(attempts)"])
            })
        scrubber = Scrubber(state: state, database: database, faults: faults, stopping: stopping, logger: logger)
        evictor = Evictor(state: state, logger: logger, summarySeconds: faults.evictionSummarySeconds ?? 600) { [database] in
            database.enqueue([.history($0)])
        }
        watcher = try DirectoryWatcher()
    }

    public func run() async throws {
        // Trap signals before anything slow, so an early SIGTERM is a clean stop.
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup)
        let config = state.config
        StateStore(directory: config.stateDir).removeStaleTemporaries()
        let pendingAtStart = restoreState()
        try openDirectory(config.cacheDir, create: true)
        // Files whose removal a restart interrupted before the second look: looked at afresh.
        for name in pendingAtStart where state.with({ $0.index[name] != nil }) {
            scrubber.fileArrived(name)
        }
        recordOnFirstSight()

        await refreshAdminMembers()
        let loop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server: ControlServer
        let privileged: @Sendable (AccessPolicy.Peer) -> Bool = { [self] peer in
            AccessPolicy(adminGroup: nil).isPrivileged(peer) || (adminMembers.withLock { $0 }?.contains(peer) ?? false)
        }
        do {
            if let fd = SocketActivation.listeningUnixSocket() {
                server = try await ControlServer.adopt(descriptor: fd, path: config.socketPath, on: loop, privileged: privileged) { [self] request, peer in
                    handle(request, peer: peer)
                }
                logger.info("serving the socket systemd passed", metadata: ["fd": "\(fd)"])
            } else {
                server = try await ControlServer.start(path: config.socketPath, mode: config.socketMode, group: config.socketGroup,
                                                       on: loop, privileged: privileged) { [self] request, peer in handle(request, peer: peer) }
            }
        } catch {
            try? await loop.shutdownGracefully()
            throw error
        }
        var metricsServer: MetricsHTTPServer? = nil
        if let listen = config.metricsListen {
            do {
                metricsServer = try await MetricsHTTPServer.start(listen: listen, on: loop, logger: logger) { [self] in metrics.render(state: state) }
                logger.info("serving /metrics over HTTP", metadata: ["listen": "\(listen)"])
            } catch {
                await server.stop()
                try? await loop.shutdownGracefully()
                throw error
            }
        }
        let maintenanceDone = DispatchSemaphore(value: 0)
        let scrubDone = DispatchSemaphore(value: 0)
        let maintenance = Thread { [self] in
            Daemon.nameThread("kvscrubd-watch")
            maintain()
            maintenanceDone.signal()
        }
        maintenance.start()
        let scrub = Thread { [self] in
            Daemon.nameThread("kvscrubd-scrub")
            scrubber.run()
            scrubDone.signal()
        }
        scrub.start()
        state.with { $0.phase = "running" }
        let (files, bytes) = state.with { ($0.index.count, $0.totalBytes) }
        logger.notice("ready", metadata: ["event": "ready", "cache_dir": "\(config.cacheDir)", "files": "\(files)",
                                          "bytes": "\(bytes)", "socket": "\(config.socketPath)"])
        notifier.ready(status: statusLine())

        for await signal in signals {
            if signal == .sighup {
                // Parses a file: off the cooperative pool.
                _ = await Self.offLoop { [self] in reload() }
                await refreshAdminMembers()
                continue
            }
            logger.notice("stopping", metadata: ["event": "stopping", "signal": "\(signal)"])
            break
        }
        notifier.stopping()
        stopping.set()
        state.with { $0.phase = "stopping" }
        watcher.wake()
        scrubber.wake()
        if maintenanceDone.wait(timeout: .now() + 1.5) == .timedOut { logger.warning("maintenance thread did not stop in time") }
        if scrubDone.wait(timeout: .now() + 1.5) == .timedOut { logger.warning("scrub thread did not stop in time") }
        scrubber.persist(force: true)
        await database.close()
        await server.stop()
        await metricsServer?.stop()
        try? await loop.shutdownGracefully()
    }

    /// Opens the state database (migrating state.json, replacing a damaged
    /// database) and puts what it holds back in memory. Returns the files whose
    /// second look a restart interrupted.
    private func restoreState() -> [String] {
        let opening = database.open()
        if let why = opening.unavailable {
            state.with { $0.noteError("open state database \(database.path): \(why)") }
            logger.error("cannot open the state database; running without it, and trying again at every save",
                         metadata: ["event": "state-db-unavailable", "path": "\(database.path)", "error": "\(why)"])
        }
        if let from = opening.migratedFrom {
            logger.notice("migrated the state file into the state database", metadata: ["event": "state-migrated", "from": "\(from)",
                                                                                       "to": "\(database.path)"])
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
            s.records = snap.records
        }
        if let scrub = snap.core?.scrub, scrub.passStartedAt != nil {
            logger.info("resuming the scrub pass", metadata: ["after": "\(scrub.cursor ?? "(start)")", "files_done": "\(scrub.filesDone)"])
        }
        return snap.core?.pendingRemovals ?? []
    }

    private var config: DaemonConfig { state.config }

    /// v1 files seen at start-up without a record that matches them (a new
    /// daemon, a lost database, files written while it was stopped) are
    /// verified, and so recorded, soon: a few as new arrivals, many by
    /// starting a pass now rather than waiting for the next one.
    private func recordOnFirstSight() {
        let unrecorded = state.with { s in s.index.keys.filter { s.isRecorded($0) == false } }
        guard !unrecorded.isEmpty else { return }
        let passActive = state.with { $0.scrub.passStartedAt != nil }
        if unrecorded.count <= 1000 {
            for name in unrecorded { scrubber.fileArrived(name) }
        } else if !passActive {
            scrubber.startPass(now: Date().timeIntervalSince1970)
        }
        logger.info("v1 checkpoints without a recorded checksum yet; verifying them to record one", metadata: [
            "event": "first-sight", "files": "\(unrecorded.count)",
            "how": "\(unrecorded.count <= 1000 ? "as new arrivals" : (passActive ? "by the pass in progress" : "by a pass started now"))"])
    }

    /// Names the calling thread as `ps -L`, `top -H` and /proc show it (at most 15 bytes).
    static func nameThread(_ name: String) {
        _ = kvs_set_thread_name(name)
    }

    /// Opens (and watches, then scans) the cache directory. Watch first: an
    /// event during the scan is then seen twice rather than not at all.
    private func openDirectory(_ path: String, create: Bool) throws {
        if create && !FileManager.default.fileExists(atPath: path) {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o750])
            logger.notice("created the cache directory", metadata: ["path": "\(path)"])
        }
        try watcher.watch(path: path)
        let dir = try CacheDirectory(path: path)
        let clock = ContinuousClock()
        let t0 = clock.now
        let scan = try dir.scan(engineABI: state.config.engineABI)
        // Records of files a crash left under a private name: the index drops them, the recovery needs them.
        let leftoverRecords = state.with { s in
            s.records.filter { r in scan.takenAway.contains { CheckpointName.originalName(ofTakenAway: $0) == r.key } }
        }
        state.with { $0.replaceIndex(scan.entries); $0.setEngineABI(scan.engineABI) }
        logger.info("engine payload ABI in force", metadata: ["event": "engine-abi", "abi": "\(scan.engineABI.description)"])
        for e in scan.errors {
            state.with { $0.noteError("\(e)") }
            logger.error("cannot read a checkpoint's header; it counts against the budget and goes first", metadata: ["event": "index-failed", "error": "\(e)"])
        }
        recoverTakenAway(scan.takenAway, in: dir, records: leftoverRecords)
        directory.withLock { $0 = dir }
        scrubber.use(directory: dir)
        logger.info("indexed the cache directory", metadata: ["files": "\(scan.entries.count)", "ignored": "\(scan.ignored.count)",
                                                            "seconds": "\(clock.now - t0)"])
    }

    /// Settles the private names a crash left in the middle of a removal:
    /// each is verified again, then removed (proven corrupt) or put back.
    private func recoverTakenAway(_ names: [String], in dir: CacheDirectory, records: [String: RecordedChecksum]) {
        guard !names.isEmpty else { return }
        let config = state.config
        var disposal = CacheDirectory.Disposal.unlink
        let brake = state.with { $0.brake.engaged }
        if let target = brake ? config.brakeQuarantineDir : config.quarantineDir, let q = try? CacheDirectory.Quarantine.open(creating: target) {
            disposal = .quarantine(q)
        }
        for name in names {
            // With the original name's record: a v1 file taken away for a checksum mismatch is judged as it was.
            let original = CheckpointName.originalName(ofTakenAway: name) ?? name
            let verifier = state.with { Verifier(engineABI: $0.engineABI.abi, recorded: records[original]) }
            let outcome = dir.recoverTakenAway(name, verifier: verifier, disposal: disposal)
            logger.notice("settled a removal a restart interrupted", metadata: ["event": "removal-recovered", "file": "\(name)",
                                                                               "outcome": "\(outcome)"])
            if case .putBack(let original) = outcome, let e = try? dir.entry(named: original, engineABI: state.with({ $0.engineABI.abi })) {
                state.with { s in
                    s.insert(e)
                    if let r = records[original] { s.setRecord(original, r) }
                }
            }
        }
    }

    /// Reads one name's index entry as the engine in force sees it, or an
    /// unusable entry with its `stat` size when it cannot be read.
    private func indexEntry(_ name: String, in dir: CacheDirectory) throws -> CacheEntry? {
        do {
            return try dir.entry(named: name, engineABI: state.with { $0.engineABI.abi })
        } catch let e as KVCError where e.errno != .noSuchFileOrDirectory {
            guard let st = try? FileStatus.of(name: name, in: dir.fd, dirPath: dir.path), st.isRegular else { throw e }
            logger.error("cannot read an arriving checkpoint; it counts against the budget and goes first",
                         metadata: ["event": "index-failed", "file": "\(name)", "error": "\(e)"])
            state.with { $0.noteError("index \(name): \(e)") }
            return CacheEntry.unreadable(name: name, status: st, error: e)
        }
    }

    /// `engine_payload_abi: auto`: a new checkpoint the engine just stored says which ABI it writes.
    private func learnEngineABI(from e: CacheEntry) {
        guard state.config.engineABI == .auto, let h = e.header, EngineABI.isTrustworthy(h) else { return }
        let r = EngineABI.Resolution(abi: h.payloadABI, source: "latest arrival", file: e.fileName)
        let changed = state.with { s -> Bool in
            let c = s.engineABI.abi != r.abi
            s.setEngineABI(r)
            return c
        }
        if changed { logger.notice("engine payload ABI in force changed", metadata: ["event": "engine-abi", "abi": "\(r.description)"]) }
    }

    /// The loop that must not hang: it feeds the watchdog, so a stuck
    /// maintenance thread (not just a live process) is what systemd restarts.
    private func maintain() {
        var nextEvict = ContinuousClock.now
        let watchdogEvery = notifier.watchdogInterval
        var nextWatchdog = ContinuousClock.now
        var nextStatus = ContinuousClock.now
        while !stopping.isSet {
            if testFaults && hangMaintenance.isSet {
                logger.warning("test fault: the maintenance loop hangs now")
                while !stopping.isSet { Thread.sleep(forTimeInterval: 0.2) }
                return
            }
            let now = ContinuousClock.now
            if let every = watchdogEvery, now >= nextWatchdog {
                notifier.watchdog()
                nextWatchdog = now + every
            }
            if notifier.isActive && now >= nextStatus {
                notifier.status(statusLine())
                nextStatus = now + .seconds(2)
            }
            guard let dir = directory.withLock({ $0 }) else { waitForDirectory(); continue }
            evictor.summarizeIfDue()
            // The timer, or `evict-now` (answered once an evaluation that began after the request is done).
            let asked = evictAsked.withLock { $0 }
            if now >= nextEvict || asked != evictDone.withLock({ $0 }) {
                evictor.evaluate(directory: dir)
                scrubber.persist(force: false)
                evictDone.withLock { $0 = asked }
                nextEvict = now + .milliseconds(Int64(state.config.evictIntervalSeconds * 1000))
                continue
            }
            var wait = nextEvict - now
            if watchdogEvery != nil { wait = min(wait, nextWatchdog - now) }
            if notifier.isActive { wait = min(wait, max(.zero, nextStatus - now)) }
            if let due = evictor.summaryDueIn() { wait = min(wait, .milliseconds(Int64(due * 1000) + 1)) }
            let events = watcher.next(timeout: wait)
            if stopping.isSet { break }
            var arrivals: [String] = []
            for event in events {
                state.with { $0.counters.inotifyEvents += 1 }
                switch event {
                case .changed(let name):
                    guard CheckpointName.isCheckpoint(name) else { continue }
                    let before = state.with { $0.index[name] }
                    do {
                        if var entry = try indexEntry(name, in: dir) {
                            if before?.identity != entry.identity {
                                learnEngineABI(from: entry)
                                entry = entry.judged(engineABI: state.with { $0.engineABI.abi })
                            }
                            let regret = state.with { s -> DaemonState.RegretRecord? in
                                s.insert(entry)
                                return before == nil ? s.noteArrival(name, bytes: entry.fileSize, now: Date().timeIntervalSince1970) : nil
                            }
                            if let regret {
                                logger.notice("an evicted checkpoint was written again (regret)", metadata: [
                                    "event": "regret", "file": "\(name)", "bytes": "\(regret.bytes)", "seconds": "\(Int(regret.afterSeconds))"])
                            }
                            if before?.identity != entry.identity {
                                arrivals.append(name)
                                scrubber.fileArrived(name)
                            }
                        } else {
                            state.with { _ = $0.remove(name) }
                        }
                    } catch let e as KVCError where e.errno == .noSuchFileOrDirectory {
                        state.with { _ = $0.remove(name) }
                    } catch {
                        state.with { $0.noteError("index \(name): \(error)") }
                    }
                case .removed(let name):
                    state.with { _ = $0.remove(name) }
                case .overflow:
                    logger.warning("inotify queue overflowed; rescanning", metadata: ["event": "rescan"])
                    rescan(dir)
                case .directoryBack:
                    continue
                case .directoryGone:
                    logger.warning("the cache directory was removed or moved; waiting for it", metadata: ["event": "directory-gone"])
                    directory.withLock { $0 = nil }
                    scrubber.use(directory: nil)
                    state.with { $0.replaceIndex([]); $0.phase = "waiting for the cache directory" }
                }
            }
            guard directory.withLock({ $0 }) != nil else { continue }
            for name in arrivals { evictor.evaluate(directory: dir, arrived: name) }
            // Records of files that went, evictions and regrets: to the state database (it batches).
            if !events.isEmpty { scrubber.persist(force: false) }
        }
    }

    private func rescan(_ dir: CacheDirectory) {
        do {
            let known = state.with { $0.index }
            let scan = try dir.scan(engineABI: state.config.engineABI)
            state.with { $0.replaceIndex(scan.entries); $0.setEngineABI(scan.engineABI); $0.counters.rescans += 1 }
            // Only what is new or replaced needs a look soon; the rest keeps its place in the pass.
            for e in scan.entries where known[e.fileName]?.identity != e.identity { scrubber.fileArrived(e.fileName) }
        } catch {
            state.with { $0.noteError("rescan: \(error)") }
        }
    }

    /// Waits until the cache directory exists again (woken by the parent
    /// directory's inotify watch), then watches and rescans it.
    private func waitForDirectory() {
        let path = state.config.cacheDir
        try? watcher.watchParentOnly(path: path)
        while !stopping.isSet {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
                do {
                    try openDirectory(path, create: false)
                    state.with { $0.phase = "running"; $0.counters.rescans += 1 }
                    logger.notice("the cache directory is back; watching it again", metadata: ["event": "directory-back"])
                    return
                } catch {
                    logger.error("cannot watch the cache directory yet", metadata: ["event": "directory-watch-failed", "error": "\(error)"])
                }
            }
            // Waiting is not hanging: the watchdog is fed and STATUS= says what it waits for.
            var wait: Duration = .seconds(2)
            if let every = notifier.watchdogInterval {
                notifier.watchdog()
                wait = min(wait, every)
            }
            if notifier.isActive { notifier.status(statusLine()) }
            // Woken by the parent's inotify event; the timeout covers a parent that cannot be watched.
            _ = watcher.next(timeout: wait)
        }
    }

    /// SIGHUP (or `kvscrubd reload`): re-read the config file under the same flags.
    /// Returns the settings kept until a restart, or why the file was not taken (the previous settings stay).
    @discardableResult
    func reload() -> Result<[String], ConfigError> {
        notifier.reloading()
        defer { notifier.ready(status: statusLine()) }
        let old = state.config
        do {
            var new = try DaemonConfig.resolve(file: configFile, flags: flags)
            let fixed = old.restartOnlyChanges(to: new)
            if !fixed.isEmpty {
                logger.warning("these settings change only on restart; keeping their current values",
                               metadata: ["settings": "\(fixed.joined(separator: ","))"])
                new.cacheDir = old.cacheDir
                new.socketPath = old.socketPath
                new.socketMode = old.socketMode
                new.socketGroup = old.socketGroup
                new.metricsListen = old.metricsListen
                new.stateDir = old.stateDir
            }
            let abiChanged = new.engineABI != old.engineABI
            state.with { $0.config = new }
            if new.logLevel != old.logLevel, let level = Logger.Level(rawValue: new.logLevel) {
                logLevels?.set(level)
            }
            if abiChanged {
                // From the headers already in the index: no file is read again.
                state.with { $0.setEngineABI(new.engineABI.resolve(entries: Array($0.index.values))) }
            }
            scrubber.wake()
            watcher.wake()
            logger.notice("configuration reloaded", metadata: ["event": "reloaded", "budget_mb": "\(new.budgetMB)", "log_level": "\(new.logLevel)",
                                                               "scrub_rate_mb_per_s": "\(new.scrubRateMBps)", "dry_run": "\(new.dryRun)"])
            return .success(fixed)
        } catch {
            state.with { $0.noteError("reload: \(error)") }
            logger.error("configuration reload failed; keeping the previous settings", metadata: ["event": "reload-failed", "error": "\(error)"])
            return .failure(error)
        }
    }

    /// Answers from memory on the socket's event loop; the requests that read
    /// files or the database, parse the config file, or wait for the
    /// maintenance loop (scrub now, history, reload, evict now) run later, off it. Public
    /// for the control fuzz target (Fuzz/), which feeds it arbitrary requests.
    public func handle(_ request: ControlRequest, peer: AccessPolicy.Peer?) -> ControlReply {
        guard let cmd = ControlCommand(rawValue: request.cmd) else {
            return .now(.failure("unknown command '\(request.cmd)'; known: \(ControlCommand.publicNames)"))
        }
        let policy = AccessPolicy(adminGroup: state.config.adminGroup, testCommands: testFaults)
        guard let decision = policy.decideWithoutGroupLookup(cmd, peer: peer) else {
            // The admin group's membership is in the group database, which may block (NSS): off the loop.
            return .later { [self] in
                let decision = await Self.offLoop { policy.decide(cmd, peer: peer) }
                if case .refused(let why) = decision { return refused(cmd, peer, why) }
                return cmd.blocks ? await handleSlow(cmd, request) : handleFromMemory(cmd, request)
            }
        }
        if case .refused(let why) = decision { return .now(refused(cmd, peer, why)) }
        if cmd.blocks { return .later { [self] in await handleSlow(cmd, request) } }
        return .now(handleFromMemory(cmd, request))
    }

    private func refused(_ cmd: ControlCommand, _ peer: AccessPolicy.Peer?, _ why: String) -> ControlResponse {
        logger.notice("request refused", metadata: ["event": "refused", "cmd": "\(cmd.rawValue)", "uid": "\(peer.map { String($0.uid) } ?? "?")"])
        return .failure(why)
    }

    /// The commands answered from memory, on the socket's event loop.
    func handleFromMemory(_ cmd: ControlCommand, _ request: ControlRequest) -> ControlResponse {
        switch cmd {
        case .ping: return ControlResponse(ok: true)
        case .status: return ControlResponse(ok: true, status: status())
        case .entries:
            var r = ControlResponse(ok: true, entries: entries())
            r.engineAbi = state.with { $0.engineABI }
            return r
        case .explain:
            guard let name = request.name, !name.isEmpty else { return .failure("explain needs a file: {\"cmd\":\"explain\",\"name\":\"<sha>\"}") }
            return explain(name).map { ControlResponse(ok: true, explanation: $0) } ?? .failure("no checkpoint \(name) in the index")
        case .scrubStatus: return ControlResponse(ok: true, scrub: status().scrub)
        case .scrubStart:
            do { return scrubReply(try scrubber.startNow()) } catch { return .failure(error.description) }
        case .scrubPause: return scrubReply(scrubber.pause())
        case .scrubResume: return scrubReply(scrubber.resume())
        case .scrubCancel:
            do { return scrubReply(try scrubber.cancel()) } catch { return .failure(error.description) }
        case .brakeRelease:
            var r = ControlResponse(ok: true, message: scrubber.releaseBrake())
            r.outcome = CommandOutcome(brake: status().brake)
            return r
        case .testHangMaintenance:
            hangMaintenance.set()
            watcher.wake()
            return ControlResponse(ok: true)
        case .scrubNow, .evictNow, .history, .reload, .metrics:
            return .failure("'\(cmd.rawValue)' is not answered from memory")
        }
    }

    /// Reads the admin group's members again (the group database may block: off every loop).
    func refreshAdminMembers() async {
        let group = state.config.adminGroup
        let members = await Self.offLoop { group.flatMap(AdminGroupMembers.resolve) }
        adminMembers.withLock { $0 = members }
    }

    /// A scrub control command's sentence, with the scrub it left behind.
    private func scrubReply(_ message: String) -> ControlResponse {
        var r = ControlResponse(ok: true, message: message)
        r.outcome = CommandOutcome(scrub: status().scrub)
        return r
    }

    /// Runs blocking work (file reads, SQLite, YAML, the group database) on a thread that
    /// may block: off the socket's event loop and off the cooperative pool.
    static func offLoop<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (k: CheckedContinuation<T, Never>) in
            DispatchQueue.global().async { k.resume(returning: body()) }
        }
    }

    /// The commands that block (files, SQLite, the config file, the maintenance loop), off the event loop.
    func handleSlow(_ cmd: ControlCommand, _ request: ControlRequest) async -> ControlResponse {
        switch cmd {
        case .metrics:
            return await Self.offLoop { [self] in ControlResponse(ok: true, metrics: metrics.render(state: state)) }
        case .reload:
            // Reads and parses the config file.
            let result = await Self.offLoop { [self] in reload() }
            await refreshAdminMembers()
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
            if let cause = request.cause, !HistoryEvent.causes.contains(cause) {
                return .failure("unknown cause '\(cause)'; causes: \(HistoryEvent.causes.joined(separator: ", "))")
            }
            let limit = min(max(request.limit ?? 1000, 0), 10_000)
            // SQLite reads block.
            let result = await Self.offLoop { [database] in
                Result { try database.history(since: request.since, cause: request.cause, limit: limit) }
            }
            switch result {
            case .success(let events):
                var r = ControlResponse(ok: true)
                r.history = events
                return r
            case .failure(let error):
                return .failure("the history cannot be read: \(error)")
            }
        case .scrubNow:
            guard let files = request.files, !files.isEmpty else { return .failure("scrub now needs at least one file") }
            guard files.count <= 10_000 else { return .failure("at most 10000 files per request") }
            // Reads whole files.
            let verdicts = await Self.offLoop { [scrubber] in scrubber.verifyNow(files) }
            return ControlResponse(ok: true, verdicts: verdicts)
        case .evictNow:
            // Counted before asking: the maintenance thread may evict before this line would run again.
            let before = state.with { ($0.counters.evictedFiles, $0.counters.evictedBytes) }
            let ticket = evictAsked.withLock { $0 += 1; return $0 }
            watcher.wake()
            let deadline = ContinuousClock.now + .seconds(10)
            while evictDone.withLock({ $0 }) < ticket && ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(5))
            }
            guard evictDone.withLock({ $0 }) >= ticket else { return .failure("the maintenance loop did not get to it within 10 s; see 'kvscrubd status'") }
            let e = state.with { s in
                CommandOutcome.Eviction(evictedFiles: s.counters.evictedFiles - before.0, evictedBytes: s.counters.evictedBytes - before.1,
                                        files: s.index.count, bytes: s.totalBytes, budgetBytes: s.config.budgetMB > 0 ? s.config.budgetBytes : 0)
            }
            var r = ControlResponse(ok: true, message: "evaluated: \(e.evictedFiles) files evicted (\(ByteText.short(e.evictedBytes))); " +
                                    "\(e.files) files, \(ByteText.short(e.bytes)) in the cache" +
                                    (e.budgetBytes > 0 ? " (budget \(ByteText.short(e.budgetBytes)))" : " (no budget)"))
            r.outcome = CommandOutcome(eviction: e)
            return r
        case .ping, .status, .entries, .explain, .scrubStatus, .scrubStart, .scrubPause, .scrubResume, .scrubCancel,
             .brakeRelease, .testHangMaintenance:
            return handleFromMemory(cmd, request)
        }
    }

    /// The one line `systemctl status` shows: "1234 files, 3.1 GiB of 4.0 GiB, scrub 42% at 171.7 MiB/s, 0 corrupt".
    func statusLine() -> String {
        state.with { s in
            var line = "\(s.index.count) files, \(ByteText.short(s.totalBytes)) of " + (s.config.budgetMB > 0 ? ByteText.short(s.config.budgetBytes) : "no budget")
            if s.scrub.passStartedAt != nil {
                let total = s.passFilesTotal
                let pct = total > 0 ? s.scrub.filesDone * 100 / total : 100
                line += ", scrub \(pct)% at \(ByteText.short(UInt64(max(0, s.scrubRate))))/s"
            } else {
                line += ", scrub idle"
            }
            line += ", \(s.counters.corruptFound) corrupt"
            if s.brake.engaged { line = "REMOVAL BRAKE ENGAGED: " + line }
            if s.phase != "running" { line = s.phase + ": " + line }
            return line
        }
    }

    func status() -> StatusReport {
        state.with { s in
            let c = s.config
            let filesTotal = s.index.count
            let bytesTotal = s.totalBytes
            // ETA: scrubbing time still needed, at the rate of the pass so far with paused time
            // left out (or the measured rate, or the limit); a pause does not make it grow.
            var eta: Double? = nil
            let now = Date().timeIntervalSince1970
            if let started = s.scrub.passStartedAt {
                let remaining = s.passBytesLeft
                let active = max(0, now - started - s.pausedSecondsInPass(now: now))
                var rate = active > 1 && s.scrub.bytesDone > 0 ? Double(s.scrub.bytesDone) / active : s.scrubRate
                if c.scrubRateMBps > 0 { rate = rate > 0 ? min(rate, c.scrubRateMBps * 1e6) : c.scrubRateMBps * 1e6 }
                if rate > 0 { eta = Double(remaining) / rate }
            }
            let lastStart = max(s.scrub.lastPass?.startedAt ?? 0, s.scrub.lastCancelledAt ?? 0)
            let nextPass = s.scrub.passStartedAt == nil ? (lastStart > 0 ? lastStart : s.startedAt) + c.scrubIntervalHours * 3600 : nil
            return StatusReport(
                state: s.phase, pid: getpid(), version: DaemonVersion.string, uptimeSeconds: Date().timeIntervalSince1970 - s.startedAt,
                cacheDir: c.cacheDir, files: filesTotal, bytes: bytesTotal, budgetBytes: c.budgetBytes, freeBytes: s.freeBytes,
                filesystemBytes: s.fsBytes, dryRun: c.dryRun, incompatibleFiles: s.tally().incompatible,
                // Between passes nothing is done of the next one (the last pass has its own summary).
                scrub: .init(active: s.scrub.passStartedAt != nil, filesDone: s.scrub.passStartedAt != nil ? s.scrub.filesDone : 0,
                             filesTotal: s.scrub.passStartedAt != nil ? s.passFilesTotal : filesTotal,
                             bytesDone: s.scrub.passStartedAt != nil ? s.scrub.bytesDone : 0, bytesTotal: bytesTotal, rateBytesPerSecond: s.scrubRate, limitMBps: c.scrubRateMBps,
                             etaSeconds: eta, current: s.scrubbing, passStartedAt: s.scrub.passStartedAt, nextPassAt: nextPass,
                             lastPass: s.scrub.lastPass, paused: s.scrub.paused == true, pausedSeconds: s.pausedSecondsInPass(now: now),
                             lastCancelledAt: s.scrub.lastCancelledAt, corruptFound: s.scrub.passStartedAt != nil ? s.scrub.corruptFound : nil),
                counters: s.counters, lastErrors: s.lastErrors, regret: Self.regret(s, now: now),
                engineAbi: s.engineABI, engineAbiSetting: c.engineABI.description,
                brake: .init(engaged: s.brake.engaged, engagedAt: s.brake.engagedAt, reason: s.brake.reason, heldBack: s.brake.heldBack,
                             limit: c.removalBrake.description, corruptLastHour: s.brake.corruptLastHour(now: now),
                             verifiedLastHour: s.brake.verifiedLastHour(now: now), quarantine: c.brakeQuarantineDir),
                pendingRemovals: s.pendingRemoval.count, settleSeconds: c.removalSettleSeconds,
                checksums: s.checksumProtection)
        }
    }

    func entries() -> [EntryReport] {
        let now = UInt64(Date().timeIntervalSince1970)
        let (all, verdicts, superseded, recorded) = state.with { s in
            (Array(s.index.values), s.verdicts, s.supersededBy, Set(s.index.keys.filter { s.isRecorded($0) == true }))
        }
        return EvictionPlan.order(entries: all, now: now).enumerated().map { i, v in
            let b = EvictionScore.breakdown(v.entry, now: now)
            let h = v.entry.header
            return EntryReport(rank: i + 1, name: v.entry.fileName, version: h?.version, reason: h?.reason.name, tokens: h?.tokens,
                               hits: h?.hits, size: v.entry.fileSize, lastUsed: h?.lastUsed, score: v.score,
                               effectiveHits: b.effectiveHits, idleSeconds: b.idleSeconds, tokensPerByte: b.tokensPerByte,
                               anchorFactor: b.anchorFactor, unusable: v.entry.unusable,
                               superseded: superseded[v.entry.fileName] != nil, verdict: verdicts[v.entry.fileName]?.rawValue,
                               checksums: h.map { $0.version == 2 ? "crc32c" : (recorded.contains(v.entry.fileName) ? "recorded" : "none") })
        }
    }

    /// `explain`: where one file stands in the eviction order, and why.
    func explain(_ arg: String) -> Explanation? {
        var name = (arg as NSString).lastPathComponent
        if !name.hasSuffix(".kv") { name += ".kv" }
        let all = entries()
        // A unique prefix of the sha is enough, as with git.
        let matches = all.filter { $0.name == name || (arg.count >= 4 && $0.name.lowercased().hasPrefix(arg.lowercased())) }
        guard matches.count == 1, let e = matches.first else { return nil }
        let (budget, supersededBy, dryRun) = state.with { ($0.config.budgetBytes, $0.supersededBy[e.name], $0.config.dryRun) }
        let total = all.reduce(UInt64(0)) { $0 + $1.size }
        let before = all.prefix(e.rank - 1).reduce(UInt64(0)) { $0 + $1.size }
        let over = budget > 0 && total > budget ? total - budget : 0
        let evictedNow = over > before
        var why: [String] = []
        if let u = e.unusable {
            why.append("the engine cannot use it (\(u)): it scores 0 and goes before any usable checkpoint")
        } else {
            why.append(String(format: "score %.6g = (decayed hits %.3f + 1) × %.4g tokens per byte", e.score, e.effectiveHits, e.tokensPerByte)
                       + (e.anchorFactor > 1 ? " × \(Int(e.anchorFactor)) (a \(e.reason ?? "?") checkpoint is an anchor)" : ""))
            if let hits = e.hits, let idle = e.idleSeconds {
                why.append(String(format: "%u hits, last used %@ ago: hits halve every 6 h idle, so they count as %.3f now", hits, DurationText.short(Double(idle)), e.effectiveHits))
            }
            if e.reason == "continued" && e.anchorFactor == 1 { why.append("a continued checkpoint is a waypoint, not an anchor: no 2× prior") }
            if let by = supersededBy { why.append("superseded: \(by) extends its text, so the engine's pre-store pass scored it down to 5–50 % when that file arrived") }
        }
        why.append("rank \(e.rank) of \(all.count) in eviction order (1 goes first); \(before) bytes go before it")
        if budget == 0 {
            why.append("no byte budget is set: nothing is evicted for size")
        } else if evictedNow {
            why.append("the cache is \(over) bytes over its budget: this file would be evicted by the next evaluation" + (dryRun ? " (dry run: logged only)" : ""))
        } else {
            why.append("the cache is " + (over > 0 ? "\(over) bytes over" : "\(budget - min(budget, total)) bytes under") + " its budget: \(before + e.size - over) more bytes would have to go before this file's turn")
        }
        return Explanation(entry: e, files: all.count, bytesBefore: before, overBudgetBytes: over, wouldBeEvictedNow: evictedNow, reasons: why)
    }

    /// Regret advice for `status`: evicted checkpoints the engine wrote again within the window.
    static func regret(_ s: DaemonState.Inner, now: Double) -> StatusReport.Regret {
        let day = s.regretLog.filter { now - $0.at <= 86400 }
        // Distinct files: one checkpoint evicted and rewritten five times needed its room once.
        var sizes: [String: UInt64] = [:]
        for r in day { sizes[r.file] = max(sizes[r.file] ?? 0, r.bytes) }
        let bytes = sizes.values.reduce(0, +)
        var advice: String? = nil
        if day.count >= 3 {
            let mib = (bytes + (1 << 20) - 1) >> 20
            advice = "the budget is too small: \(day.count) regrets in the last day (evicted checkpoints the engine wrote again within \(DurationText.short(s.config.regretWindowHours * 3600))); about \(mib) MiB more budget would have kept them"
        }
        return StatusReport.Regret(windowHours: s.config.regretWindowHours, lastDay: day.count, lastDayBytes: bytes,
                                   total: s.counters.regrets ?? 0, advice: advice)
    }
}
