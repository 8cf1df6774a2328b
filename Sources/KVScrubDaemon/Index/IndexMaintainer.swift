import Foundation
import KVCFormat
import KVScrubControl
import KVScrubSystemd
import Logging
import NIOConcurrencyHelpers

/// The index maintainer: keeps the in-memory index in step with the cache
/// directory and the cache within its budget. It owns `IndexState` (the index,
/// the eviction ledger, the orphan sweep's candidates, the free space), the
/// inotify watch (`DirectoryWatcher`), the directory handle, the evictor, and
/// the `evict-now` requests; it runs the maintenance loop on a thread of its
/// own (`IndexMaintainer+Loop`), which also feeds systemd's watchdog, so a
/// stuck loop, not just a dead process, is what systemd restarts.
///
/// Start-up (`openDirectory`, `recordOnFirstSight`, `recoverTakenAway`) and
/// the directory going away and coming back are here too. The scrubber is
/// told of arrivals and of the directory handle; it changes the index only
/// through `CacheIndex`'s narrow methods.
final class IndexMaintainer: Sendable {
    /// What this part owns.
    let state: PartState<IndexState>
    let settings: DaemonSettings
    let events: EventRecorder
    let logger: Logger
    let scrubber: Scrubber
    let saver: StateSaver
    let evictor: Evictor
    let watcher: DirectoryWatcher
    let notifier: SystemdNotifier
    let faults: TestFaults
    /// The line systemd's STATUS= shows (the control handler's), refreshed by the loop.
    let statusLine: @Sendable () -> String
    /// Ends the maintenance loop (its service's graceful shutdown sets it).
    let stopping = StopFlag()
    /// `evict-now` requests: asked and answered counts, so a request waits for an evaluation that began after it.
    let evictAsked = NIOLockedValueBox(0)
    let evictDone = NIOLockedValueBox(0)
    /// Test-only fault: when set, the maintenance loop hangs, so a test can see the watchdog fire.
    /// Reachable only when the daemon runs with KVSCRUBD_TEST_FAULTS=1.
    let hangMaintenance = StopFlag()

    init(state: PartState<IndexState>, settings: DaemonSettings, events: EventRecorder, scrubber: Scrubber, saver: StateSaver,
         notifier: SystemdNotifier, faults: TestFaults, logger: Logger, history: @escaping @Sendable (HistoryEvent) -> Void,
         statusLine: @escaping @Sendable () -> String) throws {
        self.state = state
        self.settings = settings
        self.events = events
        self.scrubber = scrubber
        self.saver = saver
        self.notifier = notifier
        self.faults = faults
        self.logger = logger
        self.statusLine = statusLine
        evictor = Evictor(state: state, settings: settings, events: events, logger: logger, history: history)
        watcher = try DirectoryWatcher()
    }

    var clock: any DaemonClock { settings.clock }

    /// The cache directory, when it is open and watched.
    var directory: CacheDirectory? { state.read { $0.directory } }

    /// Wakes the maintenance loop (a reload, a request).
    func wake() { watcher.wake() }

    /// The settings changed (a reload): the ABI setting may put another generation in force, judged from
    /// the headers already in the index (no file is read again).
    func settingsChanged(from old: DaemonConfig, to new: DaemonConfig) {
        if new.engine != old.engine {
            state.change { $0.index.setEngineABI(new.engine.resolve(entries: Array($0.index.entries.values))) }
        }
        watcher.wake()
    }

    /// `evict-now`: waits (at most `timeout`) for an evaluation that began after the request.
    func evictNow(timeout: Duration) async -> Bool {
        let ticket = evictAsked.withLockedValue { $0 += 1; return $0 }
        watcher.wake()
        let deadline = ContinuousClock.now + timeout
        while evictDone.withLockedValue({ $0 }) < ticket && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        return evictDone.withLockedValue { $0 } >= ticket
    }

    /// Test-only: the maintenance loop hangs from now on (SIGUSR2 under KVSCRUBD_TEST_FAULTS=1).
    func hang() {
        hangMaintenance.set()
        watcher.wake()
    }

    /// The recorded checksums and the eviction ledger the state database kept (start-up, before `use`).
    func restore(records: [String: RecordedChecksum], recentEvictions: [String: EvictionLedger.Eviction], regrets: [EvictionLedger.Regret]) {
        state.change { s in
            s.ledger.restore(recent: recentEvictions, regrets: regrets)
            s.index.loadRecords(records)
        }
    }

    /// A scan of the cache directory, not yet in the index (`use`).
    struct Scanned: Sendable {
        let directory: CacheDirectory
        let scan: CacheDirectory.Scan
        let seconds: Duration
    }

    /// Opens (and watches, then scans) the cache directory, and puts what it holds in the index.
    func openDirectory(_ path: String, create: Bool) throws {
        use(try scanDirectory(path, create: create))
    }

    /// Opens (and watches, then scans) the cache directory. Watch first: an
    /// event during the scan is then seen twice rather than not at all. Changes
    /// no state: at start-up it runs beside the state database's opening.
    func scanDirectory(_ path: String, create: Bool) throws -> Scanned {
        if create && !FileManager.default.fileExists(atPath: path) {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o750])
            logger.notice("created the cache directory", metadata: ["path": "\(path)"])
        }
        try watcher.watch(path: path)
        let dir = try CacheDirectory(path: path)
        let clock = ContinuousClock()
        let t0 = clock.now
        let scan = try dir.scan(engineABI: settings.config.engine)
        return Scanned(directory: dir, scan: scan, seconds: clock.now - t0)
    }

    /// Puts a scan in the index (the records of the files it holds kept, those of files gone dropped),
    /// settles the removals a crash interrupted, and watches the directory from now on.
    func use(_ scanned: Scanned) {
        let (dir, scan) = (scanned.directory, scanned.scan)
        // Records of files a crash left under a private name: the index drops them, the recovery needs them.
        let leftoverRecords = state.change { s in
            let left = s.index.records.filter { r in scan.takenAway.contains { CheckpointName.originalName(ofTakenAway: $0) == r.key } }
            s.index.replace(with: scan.entries, judgedUnder: scan.engineABI)
            return left
        }
        events.record(DaemonEvent(.engineABI, .info, "engine generation in force", ["generation": "\(scan.engineABI.description)"]))
        for e in scan.errors {
            events.record(DaemonEvent(.indexFailed, .error, "cannot read a checkpoint's header; it counts against the budget and goes first",
                                      ["error": "\(e)"], counts: .error("\(e)")))
        }
        recoverTakenAway(scan.takenAway, in: dir, records: leftoverRecords)
        state.change { $0.directory = dir }
        scrubber.use(directory: dir)
        logger.info("indexed the cache directory", metadata: ["files": "\(scan.entries.count)", "ignored": "\(scan.ignored.count)",
                                                            "seconds": "\(scanned.seconds)"])
    }

    /// v1 files seen at start-up without a record that matches them (a new
    /// daemon, a lost database, files written while it was stopped) are
    /// verified, and so recorded, soon: a few as new arrivals, many by
    /// starting a pass now rather than waiting for the next one.
    func recordOnFirstSight() {
        // The census counts them: a cache with none (v2 only, or every v1 file recorded) is not walked.
        let unrecorded = state.read { s in
            s.index.checksumProtection.notYetRecorded == 0 ? [] : s.index.entries.keys.filter { s.index.isRecorded($0) == false }
        }
        guard !unrecorded.isEmpty else { return }
        let passActive = scrubber.state.read { $0.passActive }
        if unrecorded.count <= 1000 {
            for name in unrecorded { scrubber.fileArrived(name) }
        } else if !passActive {
            scrubber.startPass(now: clock.now())
        }
        events.record(DaemonEvent(.firstSight, .info, "v1 checkpoints without a recorded checksum yet; verifying them to record one", [
            "files": "\(unrecorded.count)",
            "how": "\(unrecorded.count <= 1000 ? "as new arrivals" : (passActive ? "by the pass in progress" : "by a pass started now"))"]))
    }

    /// Settles the private names a crash left in the middle of a removal:
    /// each is verified again, then removed (proven corrupt) or put back.
    func recoverTakenAway(_ names: [String], in dir: CacheDirectory, records: [String: RecordedChecksum]) {
        guard !names.isEmpty else { return }
        let config = settings.config
        var disposal = CacheDirectory.Disposal.unlink
        let brake = scrubber.state.read { $0.brake.engaged }
        if brake && config.removalBrakeAction == .keep {
            disposal = .keepInPlace(why: "held back by the removal brake")
        } else if let target = brake ? config.brakeQuarantineDir : config.quarantineDir,
                  let q = try? CacheDirectory.Quarantine.open(creating: target) {
            disposal = .quarantine(q)
        }
        for name in names {
            // With the original name's record: a v1 file taken away for a checksum mismatch is judged as it was.
            let original = CheckpointName.originalName(ofTakenAway: name) ?? name
            let engine = state.read { $0.index.engineABI.generation }
            let outcome = dir.recoverTakenAway(name, verifier: Verifier(engine: engine, recorded: records[original]), disposal: disposal)
            events.record(DaemonEvent(.removalRecovered, .notice, "settled a removal a restart interrupted",
                                      ["file": "\(name)", "outcome": "\(outcome)"]))
            if case .putBack(let original) = outcome, let e = try? dir.entry(named: original, engine: engine) {
                state.change { s in
                    s.index.insert(e)
                    if let r = records[original] { s.index.setRecord(original, r) }
                }
            }
        }
    }

    /// Reads one name's index entry as the engine in force sees it, or an
    /// unusable entry with its `stat` size when it cannot be read.
    func indexEntry(_ name: String, in dir: CacheDirectory) throws -> CacheEntry? {
        do {
            return try dir.entry(named: name, engine: state.read { $0.index.engineABI.generation })
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
        let setting = settings.setting(\.engine)
        guard setting.abi == .auto || setting.payloadVersion == nil, e.payloadTag.dsv4Version != nil else { return }
        var r = setting.resolve(entries: [e])
        guard r.generation != nil, r.file != nil else { return }
        r.source = "latest arrival"
        let changed = state.change { s -> Bool in
            let c = s.index.engineABI.generation != r.generation
            s.index.setEngineABI(r)
            return c
        }
        if changed { events.record(DaemonEvent(.engineABI, .notice, "engine generation in force changed", ["generation": "\(r.description)"])) }
    }

    /// Temporary files an engine left behind (`orphan_temp_minutes`): see `OrphanSweep`.
    func sweepOrphans(_ dir: CacheDirectory) {
        let config = settings.config
        guard let minutes = config.orphanTempMinutes else { return }
        let now = clock.now()
        let candidates = state.change { s -> [String: FileStamp]? in
            guard now >= s.nextOrphanSweep else { return nil }
            s.nextOrphanSweep = now + OrphanSweep.interval(minutes: minutes)
            return s.orphanCandidates
        }
        guard let candidates else { return }
        let sweep = OrphanSweep.run(dir, minutes: minutes, now: now, candidates: candidates, dryRun: config.dryRun)
        state.change { $0.orphanCandidates = sweep.candidates }
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
}
