import Foundation
import KVCFormat
import Logging

/// The maintenance loop: inotify events into the index (`apply`), the timed
/// work (`tick`: the evict timer, superseded generations, orphaned temporary
/// files, the eviction summary), the directory going away and coming back,
/// and the watchdog. `tick` and `apply` are the loop's two steps; a test runs
/// them with a clock of its own and sees in a moment what takes hours.
extension IndexMaintainer {
    /// The thread's body; returns once `stopping` is set.
    func maintain() {
        let watchdogEvery = notifier.watchdogInterval
        var nextWatchdog = ContinuousClock.now
        var nextStatus = ContinuousClock.now
        var nextEvict = -Double.infinity
        while !stopping.isSet {
            if faults.enabled && hangMaintenance.isSet {
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
            guard let dir = directory else { waitForDirectory(); continue }
            let due = tick(in: dir, nextEvict: &nextEvict)
            var wait = Duration.milliseconds(Int64(min(due, 3600) * 1000) + 1)
            if watchdogEvery != nil { wait = min(wait, nextWatchdog - now) }
            if notifier.isActive { wait = min(wait, max(.zero, nextStatus - now)) }
            let changes = watcher.next(timeout: wait)
            if stopping.isSet { break }
            apply(changes, in: dir)
        }
    }

    /// The timed work due at the clock's time: the eviction summary, and on the evict timer (or an
    /// `evict-now`) an evaluation, superseded generations and orphaned temporary files. `nextEvict`: when
    /// the timer is next due (the loop keeps it). Returns the seconds until something is due.
    @discardableResult
    func tick(in dir: CacheDirectory, nextEvict: inout Double) -> Double {
        let now = clock.now()
        let interval = settings.setting(\.evictIntervalSeconds)
        evictor.summarizeIfDue()
        // `evict-now` is answered once an evaluation that began after the request is done. A clock set back
        // by more than the interval does not hold the timer off.
        let asked = evictAsked.withLockedValue { $0 }
        if now >= nextEvict || nextEvict - now > interval || asked != evictDone.withLockedValue({ $0 }) {
            evictor.evaluate(directory: dir)
            evictor.reclaimSuperseded(directory: dir)
            sweepOrphans(dir)
            saver.persist(force: false)
            evictDone.withLockedValue { $0 = asked }
            nextEvict = now + interval
        }
        return min(nextEvict - now, evictor.summaryDueIn() ?? .infinity)
    }

    /// Applies what inotify reported: arrivals and changes are read and indexed (and then evaluated
    /// for the budget, and queued for the scrub), removals leave the index, an overflow rescans.
    func apply(_ changes: [DirectoryWatcher.Event], in dir: CacheDirectory) {
        var arrivals: [String] = []
        for event in changes {
            events.record(DaemonEvent(.inotifyEvent, .trace, "inotify event", counts: .inotifyEvent))
            switch event {
            case .changed(let name):
                guard CheckpointName.isCheckpoint(name) else { continue }
                if indexChanged(name, in: dir) { arrivals.append(name) }
            case .removed(let name, let unlinked):
                // A name still indexed when its unlink is seen was deleted by someone else: the engine's
                // eviction, a failed restore, a replaced file (kvscrubd takes its own out of the index
                // first, or renames them away). Normal work: counted, logged at info, never an error.
                let now = clock.now()
                events.record(changing: state) { s in
                    guard let gone = s.index.remove(name), unlinked else { return nil }
                    return DaemonEvent(.engineDeleted, .info, "the engine deleted a checkpoint",
                                       ["file": "\(name)", "bytes": "\(gone.fileSize)"],
                                       counts: .engineDeleted(bytes: gone.fileSize, at: now))
                }
            case .overflow:
                events.record(DaemonEvent(.rescan, .warning, "inotify queue overflowed; rescanning"))
                rescan(dir)
            case .directoryBack:
                continue
            case .directoryGone:
                events.record(DaemonEvent(.directoryGone, .warning, "the cache directory was removed or moved; waiting for it"))
                state.change { s in
                    s.index.replace(with: [])
                    s.directory = nil
                }
                scrubber.use(directory: nil)
            }
        }
        guard directory != nil else { return }
        for name in arrivals { evictor.evaluate(directory: dir, arrived: name) }
        // Records of files that went, evictions and regrets: to the state database (it batches).
        if !changes.isEmpty { saver.persist(force: false) }
    }

    /// Reads a name inotify reported and puts it in the index (or takes it out, when it is gone).
    /// Returns whether it is new or of another identity: an arrival, for eviction and the scrub.
    private func indexChanged(_ name: String, in dir: CacheDirectory) -> Bool {
        let before = state.read { $0.index[name] }
        do {
            guard var entry = try indexEntry(name, in: dir) else {
                state.change { _ = $0.index.remove(name) }
                return false
            }
            let arrived = before?.identity != entry.identity
            if arrived {
                learnEngineABI(from: entry)
                entry = entry.judged(engine: state.read { $0.index.engineABI.generation })
            }
            let now = clock.now(), window = settings.setting(\.regretWindowHours) * 3600
            events.record(changing: state) { s in
                s.index.insert(entry)
                guard before == nil, let regret = s.ledger.noteArrival(name, bytes: entry.fileSize, now: now, window: window) else {
                    return nil
                }
                return DaemonEvent(.regret, .notice, "an evicted checkpoint was written again (regret)", [
                    "file": "\(name)", "bytes": "\(regret.bytes)", "seconds": "\(Int(regret.afterSeconds))"], counts: .regret)
            }
            if arrived { scrubber.fileArrived(name) }
            return arrived
        } catch let e as KVCError where e.errno == .noSuchFileOrDirectory {
            state.change { _ = $0.index.remove(name) }
        } catch {
            events.record(DaemonEvent(.indexFailed, .error, "cannot read an arriving checkpoint", ["file": "\(name)", "error": "\(error)"],
                                      counts: .error("index \(name): \(error)")))
        }
        return false
    }

    func rescan(_ dir: CacheDirectory) {
        do {
            let known = state.read { $0.index.entries }
            let scan = try dir.scan(engineABI: settings.config.engine)
            events.record(DaemonEvent(.rescanned, .info, "rescanned the cache directory", ["files": "\(scan.entries.count)"], counts: .rescan),
                          changing: state) { $0.index.replace(with: scan.entries, judgedUnder: scan.engineABI) }
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
        let path = settings.config.cacheDir
        try? watcher.watchParentOnly(path: path)
        while !stopping.isSet {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
                do {
                    try openDirectory(path, create: false)
                    events.record(DaemonEvent(.directoryBack, .notice, "the cache directory is back; watching it again", counts: .rescan))
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
}
