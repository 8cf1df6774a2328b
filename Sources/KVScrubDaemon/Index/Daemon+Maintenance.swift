import CLinux
import Foundation
import KVCFormat
import KVScrubSystemd
import Logging
import NIOPosix
import UnixSignals
#if canImport(Glibc)
import Glibc
#endif

/// The maintenance thread: inotify events into the index, eviction on arrivals
/// and on the timer, the directory going and coming back, and reloads.
extension Daemon {
    /// Reads one name's index entry as the engine in force sees it, or an
    /// unusable entry with its `stat` size when it cannot be read.
    func indexEntry(_ name: String, in dir: CacheDirectory) throws -> CacheEntry? {
        do {
            return try dir.entry(named: name, engine: state.with { $0.engineABI.generation })
        } catch let e as KVCError where e.errno != .noSuchFileOrDirectory {
            guard let st = try? FileStatus.of(name: name, in: dir.fd, dirPath: dir.path), st.isRegular else { throw e }
            events.record(DaemonEvent(.indexFailed, .error, "cannot read an arriving checkpoint; it counts against the budget and goes first",
                                      ["file": "\(name)", "error": "\(e)"], counts: .error("index \(name): \(e)")))
            return CacheEntry.unreadable(name: name, status: st, error: e)
        }
    }

    /// `engine_payload_abi` or `engine_payload_version` `auto`: a new checkpoint the engine just
    /// stored says which generation it is, when its header holds and its payload opens with DSV4.
    func learnEngineABI(from e: CacheEntry) {
        let setting = state.config.engine
        guard setting.abi == .auto || setting.payloadVersion == nil, e.payloadTag.dsv4Version != nil else { return }
        var r = setting.resolve(entries: [e])
        guard r.generation != nil, r.file != nil else { return }
        r.source = "latest arrival"
        let changed = state.with { s -> Bool in
            let c = s.engineABI.generation != r.generation
            s.setEngineABI(r)
            return c
        }
        if changed { events.record(DaemonEvent(.engineABI, .notice, "engine generation in force changed", ["generation": "\(r.description)"])) }
    }

    /// Temporary files an engine left behind (`orphan_temp_minutes`): see `OrphanSweep`.
    func sweepOrphans(_ dir: CacheDirectory) {
        guard let minutes = state.config.orphanTempMinutes else { return }
        let now = state.clock.now()
        let due = state.with { s -> Bool in
            guard now >= s.nextOrphanSweep else { return false }
            s.nextOrphanSweep = now + OrphanSweep.interval(minutes: minutes)
            return true
        }
        guard due else { return }
        let candidates = state.with { $0.orphanCandidates }
        let sweep = OrphanSweep.run(dir, minutes: minutes, now: now, candidates: candidates, dryRun: state.config.dryRun)
        state.with { $0.orphanCandidates = sweep.candidates }
        for r in sweep.removed {
            events.record(DaemonEvent(.orphanRemoved, .notice, "removed a temporary file an engine left behind",
                                      ["file": "\(r.name)", "bytes": "\(r.bytes)", "idle_minutes": "\(Int(r.idleSeconds / 60))", "writer": "\(r.writer)"],
                                      counts: .orphanRemoved(bytes: r.bytes)))
        }
        for (name, error) in sweep.failed {
            events.record(DaemonEvent(.evictFailed, .error, "cannot remove an orphaned temporary file", ["file": "\(name)", "error": "\(error)"],
                                      counts: .error("remove orphan \(name): \(error)")))
        }
    }

    /// The loop that must not hang: it feeds the watchdog, so a stuck
    /// maintenance thread (not just a live process) is what systemd restarts.
    func maintain() {
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
                evictor.reclaimSuperseded(directory: dir)
                sweepOrphans(dir)
                scrubber.persist(force: false)
                evictDone.withLock { $0 = asked }
                nextEvict = now + .milliseconds(Int64(state.config.evictIntervalSeconds * 1000))
                continue
            }
            var wait = nextEvict - now
            if watchdogEvery != nil { wait = min(wait, nextWatchdog - now) }
            if notifier.isActive { wait = min(wait, max(.zero, nextStatus - now)) }
            if let due = evictor.summaryDueIn() { wait = min(wait, .milliseconds(Int64(due * 1000) + 1)) }
            let changes = watcher.next(timeout: wait)
            if stopping.isSet { break }
            var arrivals: [String] = []
            for event in changes {
                events.record(DaemonEvent(.inotifyEvent, .trace, "inotify event", counts: .inotifyEvent))
                switch event {
                case .changed(let name):
                    guard CheckpointName.isCheckpoint(name) else { continue }
                    let before = state.with { $0.index[name] }
                    do {
                        if var entry = try indexEntry(name, in: dir) {
                            if before?.identity != entry.identity {
                                learnEngineABI(from: entry)
                                entry = entry.judged(engine: state.with { $0.engineABI.generation })
                            }
                            events.record { s in
                                s.insert(entry)
                                guard before == nil, let regret = s.noteArrival(name, bytes: entry.fileSize, now: s.clock.now()) else {
                                    return nil
                                }
                                return DaemonEvent(.regret, .notice, "an evicted checkpoint was written again (regret)", [
                                    "file": "\(name)", "bytes": "\(regret.bytes)", "seconds": "\(Int(regret.afterSeconds))"], counts: .regret)
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
                        events.record(DaemonEvent(.indexFailed, .error, "cannot read an arriving checkpoint", ["file": "\(name)", "error": "\(error)"],
                                                  counts: .error("index \(name): \(error)")))
                    }
                case .removed(let name, let unlinked):
                    // A name still indexed when its unlink is seen was deleted by someone else: the engine's
                    // eviction, a failed restore, a replaced file (kvscrubd takes its own out of the index
                    // first, or renames them away). Normal work: counted, logged at info, never an error.
                    events.record { s in
                        guard let gone = s.remove(name), unlinked else { return nil }
                        return DaemonEvent(.engineDeleted, .info, "the engine deleted a checkpoint",
                                           ["file": "\(name)", "bytes": "\(gone.fileSize)"],
                                           counts: .engineDeleted(bytes: gone.fileSize, at: s.clock.now()))
                    }
                case .overflow:
                    events.record(DaemonEvent(.rescan, .warning, "inotify queue overflowed; rescanning"))
                    rescan(dir)
                case .directoryBack:
                    continue
                case .directoryGone:
                    events.record(DaemonEvent(.directoryGone, .warning, "the cache directory was removed or moved; waiting for it"))
                    directory.withLock { $0 = nil }
                    scrubber.use(directory: nil)
                    state.with { $0.replaceIndex([]); $0.phase = .waitingForDirectory }
                }
            }
            guard directory.withLock({ $0 }) != nil else { continue }
            for name in arrivals { evictor.evaluate(directory: dir, arrived: name) }
            // Records of files that went, evictions and regrets: to the state database (it batches).
            if !changes.isEmpty { scrubber.persist(force: false) }
        }
    }

    func rescan(_ dir: CacheDirectory) {
        do {
            let known = state.with { $0.index }
            let scan = try dir.scan(engineABI: state.config.engine)
            events.record(DaemonEvent(.rescanned, .info, "rescanned the cache directory", ["files": "\(scan.entries.count)"], counts: .rescan)) {
                $0.replaceIndex(scan.entries, judgedUnder: scan.engineABI)
            }
            // Only what is new or replaced needs a look soon; the rest keeps its place in the pass.
            for e in scan.entries where known[e.fileName]?.identity != e.identity { scrubber.fileArrived(e.fileName) }
        } catch {
            events.record(DaemonEvent(.rescanFailed, .error, "cannot rescan the cache directory", ["error": "\(error)"],
                                      counts: .error("rescan: \(error)")))
        }
    }

    /// Waits until the cache directory exists again (woken by the parent
    /// directory's inotify watch), then watches and rescans it.
    func waitForDirectory() {
        let path = state.config.cacheDir
        try? watcher.watchParentOnly(path: path)
        while !stopping.isSet {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
                do {
                    try openDirectory(path, create: false)
                    events.record(DaemonEvent(.directoryBack, .notice, "the cache directory is back; watching it again", counts: .rescan)) {
                        $0.phase = .running
                    }
                    return
                } catch {
                    events.record(DaemonEvent(.directoryWatchFailed, .error, "cannot watch the cache directory yet", ["error": "\(error)"]))
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
    /// Blocks (the file, the group database for admin_group): call it off the event loop.
    @discardableResult
    func reload() -> Result<[String], ConfigError> {
        notifier.reloading()
        defer {
            refreshAdminMembers()
            notifier.ready(status: statusLine())
            statusCache.withLock { $0 = nil }
        }
        let old = state.config
        do {
            var new = try DaemonConfig.resolve(file: configFile, flags: flags)
            let fixed = old.restartOnlyChanges(to: new)
            if !fixed.isEmpty {
                logger.warning("these settings change only on restart; keeping their current values",
                               metadata: ["settings": "\(fixed.joined(separator: ","))"])
                new.keepRestartOnlySettings(of: old)
            }
            let abiChanged = new.engine != old.engine
            state.with { $0.config = new }
            if new.logLevel != old.logLevel, let level = Logger.Level(rawValue: new.logLevel) {
                logLevels?.set(level)
            }
            if abiChanged {
                // From the headers already in the index: no file is read again.
                state.with { $0.setEngineABI(new.engine.resolve(entries: Array($0.index.values))) }
            }
            scrubber.wake()
            watcher.wake()
            events.record(DaemonEvent(.reloaded, .notice, "configuration reloaded", ["budget_mb": "\(new.budgetMB)", "log_level": "\(new.logLevel)",
                                                                                   "scrub_rate_mb_per_s": "\(new.scrubRateMBps)", "dry_run": "\(new.dryRun)"]))
            return .success(fixed)
        } catch {
            events.record(DaemonEvent(.reloadFailed, .error, "configuration reload failed; keeping the previous settings", ["error": "\(error)"],
                                      counts: .error("reload: \(error)")))
            return .failure(error)
        }
    }
}
