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
    let stopping = StopFlag()
    let store: StateStore
    let scrubber: Scrubber
    let evictor: Evictor
    let watcher: DirectoryWatcher
    let notifier = SystemdNotifier()
    private let directory = MutexBox<CacheDirectory?>(nil)
    /// Test-only fault: when set, the maintenance loop hangs, so a test can see the watchdog fire.
    /// Reachable only when the daemon runs with KVSCRUBD_TEST_FAULTS=1.
    private let hangMaintenance = StopFlag()
    private let testFaults = ProcessInfo.processInfo.environment["KVSCRUBD_TEST_FAULTS"] == "1"

    public init(config: DaemonConfig, configFile: String?, flags: [(String, String)], logger: Logger) throws {
        state = DaemonState(config: config)
        self.configFile = configFile
        self.flags = flags
        self.logger = logger
        store = StateStore(directory: config.stateDir)
        scrubber = Scrubber(state: state, store: store, stopping: stopping, logger: logger)
        evictor = Evictor(state: state, logger: logger)
        watcher = try DirectoryWatcher()
    }

    public func run() async throws {
        // Trap signals before anything slow, so an early SIGTERM is a clean stop.
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup)
        let config = state.config
        do {
            if let record = try store.load() {
                state.with { s in
                    s.scrub = record.scrub
                    s.counters = record.counters
                    s.counters.inotifyEvents = 0
                    s.counters.rescans = 0
                    s.counters.errors = 0
                }
                if record.scrub.passStartedAt != nil {
                    logger.info("resuming the scrub pass", metadata: ["after": "\(record.scrub.cursor ?? "(start)")",
                                                                      "files_done": "\(record.scrub.filesDone)"])
                }
            }
        } catch {
            logger.warning("state file unreadable; starting with fresh counters", metadata: ["path": "\(store.path)", "error": "\(error)"])
        }
        try openDirectory(config.cacheDir, create: true)

        let loop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server: ControlServer
        do {
            if let fd = SocketActivation.listeningUnixSocket() {
                server = try await ControlServer.adopt(descriptor: fd, path: config.socketPath, on: loop, logger: logger) { [self] request in handle(request) }
                logger.info("serving the socket systemd passed", metadata: ["fd": "\(fd)"])
            } else {
                server = try await ControlServer.start(path: config.socketPath, mode: config.socketMode, group: config.socketGroup,
                                                       on: loop, logger: logger) { [self] request in handle(request) }
            }
        } catch {
            try? await loop.shutdownGracefully()
            throw error
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
            if signal == .sighup { reload(); continue }
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
        await server.stop()
        try? await loop.shutdownGracefully()
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
        let scan = try dir.scan()
        state.with { $0.replaceIndex(scan.entries) }
        for e in scan.errors {
            state.with { $0.noteError("\(e)") }
            logger.error("cannot read a checkpoint's header", metadata: ["error": "\(e)"])
        }
        directory.withLock { $0 = dir }
        scrubber.use(directory: dir)
        logger.info("indexed the cache directory", metadata: ["files": "\(scan.entries.count)", "ignored": "\(scan.ignored.count)",
                                                            "seconds": "\(clock.now - t0)"])
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
            if now >= nextEvict {
                evictor.evaluate(directory: dir)
                nextEvict = now + .milliseconds(Int64(state.config.evictIntervalSeconds * 1000))
                continue
            }
            var wait = nextEvict - now
            if watchdogEvery != nil { wait = min(wait, nextWatchdog - now) }
            if notifier.isActive { wait = min(wait, max(.zero, nextStatus - now)) }
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
                        if let entry = try dir.entry(named: name) {
                            state.with { $0.insert(entry) }
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
        }
    }

    private func rescan(_ dir: CacheDirectory) {
        do {
            let scan = try dir.scan()
            state.with { $0.replaceIndex(scan.entries); $0.counters.rescans += 1 }
            for e in scan.entries { scrubber.fileArrived(e.fileName) }
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
                    logger.error("cannot watch the cache directory yet", metadata: ["error": "\(error)"])
                }
            }
            // Woken by the parent's inotify event; the timeout covers a parent that cannot be watched.
            _ = watcher.next(timeout: .seconds(2))
        }
    }

    /// SIGHUP: re-read the config file under the same flags.
    func reload() {
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
                new.stateDir = old.stateDir
            }
            state.with { $0.config = new }
            scrubber.wake()
            watcher.wake()
            logger.notice("configuration reloaded", metadata: ["event": "reloaded", "budget_mb": "\(new.budgetMB)",
                                                               "scrub_rate_mb_per_s": "\(new.scrubRateMBps)", "dry_run": "\(new.dryRun)"])
        } catch {
            state.with { $0.noteError("reload: \(error)") }
            logger.error("configuration reload failed; keeping the previous settings", metadata: ["event": "reload-failed", "error": "\(error)"])
        }
    }

    func handle(_ request: ControlRequest) -> ControlResponse {
        switch request.cmd {
        case "ping": return ControlResponse(ok: true)
        case "status": return ControlResponse(ok: true, status: status())
        case "entries": return ControlResponse(ok: true, entries: entries())
        case "test-hang-maintenance" where testFaults:
            hangMaintenance.set()
            watcher.wake()
            return ControlResponse(ok: true)
        default: return .failure("unknown command '\(request.cmd)'; known: ping, status, entries")
        }
    }

    /// The one line `systemctl status` shows: "1234 files, 3.1/4.0 GiB, scrub 42% at 180 MB/s, 0 corrupt".
    func statusLine() -> String {
        state.with { s in
            let gib = { (b: UInt64) in String(format: "%.1f", Double(b) / 1073741824) }
            var line = "\(s.index.count) files, \(gib(s.totalBytes))/" + (s.config.budgetMB > 0 ? "\(gib(s.config.budgetBytes)) GiB" : "unlimited")
            if s.scrub.passStartedAt != nil {
                let total = s.scrub.filesDone + s.index.keys.filter { s.scrub.cursor == nil || $0 > s.scrub.cursor! }.count
                let pct = total > 0 ? s.scrub.filesDone * 100 / total : 100
                line += ", scrub \(pct)% at \(Int(s.scrubRate / 1e6)) MB/s"
            } else {
                line += ", scrub idle"
            }
            line += ", \(s.counters.corruptFound) corrupt"
            if s.phase != "running" { line = s.phase + ": " + line }
            return line
        }
    }

    func status() -> StatusReport {
        state.with { s in
            let c = s.config
            let filesTotal = s.index.count
            let bytesTotal = s.totalBytes
            var eta: Double? = nil
            if s.scrub.passStartedAt != nil && s.scrubRate > 0 {
                let remaining = s.index.filter { s.scrub.cursor == nil || $0.key > s.scrub.cursor! }.values.reduce(UInt64(0)) { $0 + $1.fileSize }
                let rate = c.scrubRateMBps > 0 ? min(s.scrubRate, c.scrubRateMBps * 1e6) : s.scrubRate
                eta = Double(remaining) / rate
            }
            let nextPass = s.scrub.passStartedAt == nil ? (s.scrub.lastPass?.startedAt ?? s.startedAt) + c.scrubIntervalHours * 3600 : nil
            return StatusReport(
                state: s.phase, pid: getpid(), version: DaemonVersion.string, uptimeSeconds: Date().timeIntervalSince1970 - s.startedAt,
                cacheDir: c.cacheDir, files: filesTotal, bytes: bytesTotal, budgetBytes: c.budgetBytes, freeBytes: s.freeBytes,
                filesystemBytes: s.fsBytes, dryRun: c.dryRun, incompatibleFiles: s.index.values.filter { $0.unusable != nil }.count,
                scrub: .init(active: s.scrub.passStartedAt != nil, filesDone: s.scrub.filesDone,
                             filesTotal: s.scrub.passStartedAt != nil ? s.scrub.filesDone + s.index.keys.filter { s.scrub.cursor == nil || $0 > s.scrub.cursor! }.count : filesTotal,
                             bytesDone: s.scrub.bytesDone, bytesTotal: bytesTotal, rateBytesPerSecond: s.scrubRate, limitMBps: c.scrubRateMBps,
                             etaSeconds: eta, current: s.scrubbing, passStartedAt: s.scrub.passStartedAt, nextPassAt: nextPass,
                             lastPass: s.scrub.lastPass),
                counters: s.counters, lastErrors: s.lastErrors)
        }
    }

    func entries() -> [EntryReport] {
        let now = UInt64(Date().timeIntervalSince1970)
        let all = state.with { Array($0.index.values) }
        return EvictionPlan.order(entries: all, now: now).enumerated().map { i, v in
            let b = EvictionScore.breakdown(v.entry, now: now)
            let h = v.entry.header
            return EntryReport(rank: i + 1, name: v.entry.fileName, version: h?.version, reason: h?.reason.name, tokens: h?.tokens,
                               hits: h?.hits, size: v.entry.fileSize, lastUsed: h?.lastUsed, score: v.score,
                               effectiveHits: b.effectiveHits, idleSeconds: b.idleSeconds, tokensPerByte: b.tokensPerByte,
                               anchorFactor: b.anchorFactor, unusable: v.entry.unusable)
        }
    }
}
