import Foundation
import KVCFormat
import KVScrubControl

/// What `kvscrubd scrub start|pause|resume|cancel|now` do. Each changes the
/// persisted scrub progress (the scrubber's own state) and wakes the scrub thread;
/// pause and cancel take effect mid-file (the throttle checks them before
/// every read), so they never wait for a large file to finish.
extension Scrubber {
    struct ControlRefusal: Error, CustomStringConvertible {
        let description: String
    }

    /// `kvscrubd brake release --restore`: releases the brake, then puts the files its quarantine
    /// holds back under their names in the cache, each only where the name is free (never over a
    /// file the engine stored since). The daemon sees them arrive and verifies them again.
    func releaseBrakeAndRestore() -> (message: String, restored: [String], left: [String]) {
        let released = releaseBrake()
        let qpath = settings.config.brakeQuarantineDir
        guard FileManager.default.fileExists(atPath: qpath) else { return (released + "; the quarantine \(qpath) is empty", [], []) }
        guard let dir = directory.withLockedValue({ $0 }) else { return (released + "; the cache directory is not available, nothing restored", [], []) }
        do {
            let outcomes = try dir.restoreFromQuarantine(try .open(creating: qpath))
            var restored: [String] = [], left: [String] = []
            for o in outcomes {
                switch o {
                case .restored(let name, let from):
                    restored.append(name)
                    events.record(DaemonEvent(.quarantineRestored, .notice, "quarantined file put back in the cache", ["file": "\(name)", "from": "\(from)"]))
                case .nameTaken(let name, let from):
                    left.append("\(from) (\(name) holds a newer file)")
                case .left(let entry, let why):
                    left.append("\(qpath)/\(entry) (\(why))")
                }
            }
            return (released + "; \(restored.count) files put back in the cache, \(left.count) left in \(qpath)", restored, left)
        } catch {
            return (released + "; cannot restore from \(qpath): \(error)", [], [])
        }
    }

    /// Starts a pass now (and lifts a pause).
    /// `kvscrubd brake release`: removals resume; files already quarantined stay there.
    func releaseBrake() -> String {
        let was = state.change { s -> (Bool, Int) in
            let r = (s.brake.engaged, s.brake.heldBack)
            s.brake.release()
            return r
        }
        persist(force: true)
        guard was.0 else { return "the removal brake was not engaged" }
        events.record(DaemonEvent(.removalBrakeReleased, .notice, "removal brake released by an operator", ["held_back": "\(was.1)"]))
        return "removal brake released; \(was.1) files it held back stay in \(settings.config.brakeQuarantineDir)"
    }

    /// Starts a pass now; returns what to say and the pass's start time, which names it.
    func startNow() throws(ControlRefusal) -> (message: String, startedAt: Double) {
        let now = clock.now()
        let running = index.change { i in
            state.read { s -> (Int, Int)? in
                guard let pass = s.progress.passStartedAt else { return nil }
                return (s.progress.filesDone, s.progress.filesDone + i.index.passLeft(pass, cursor: s.progress.cursor).files)
            }
        }
        if let (done, total) = running {
            throw ControlRefusal(description: "a scrub pass is already running (\(done) of \(total) files); 'kvscrubd scrub cancel' ends it")
        }
        let wasPaused = resumeIfPaused(now: now)
        startPass(now: now)
        wake()
        let files = index.read { $0.index.count }
        return ("scrub pass started over \(files) files" + (wasPaused ? " (scrubbing was paused; resumed)" : ""), now)
    }

    func pause() -> String {
        let now = clock.now()
        let already = state.change { s -> Bool in
            if s.progress.paused == true { return true }
            s.progress.paused = true
            s.progress.pausedAt = now
            return false
        }
        persist(force: true)
        events.record(DaemonEvent(.scrubPaused, .notice, "scrubbing paused"))
        return already ? "scrubbing was already paused" : "scrubbing paused; 'kvscrubd scrub resume' goes on where it stopped"
    }

    func resume() -> String {
        let was = resumeIfPaused(now: clock.now())
        persist(force: true)
        wake()
        if was { events.record(DaemonEvent(.scrubResumed, .notice, "scrubbing resumed")) }
        return was ? "scrubbing resumed" : "scrubbing was not paused"
    }

    private func resumeIfPaused(now: Double) -> Bool {
        state.change { s in
            guard s.progress.paused == true else { return false }
            if s.progress.passStartedAt != nil, let at = s.progress.pausedAt {
                s.progress.pausedSeconds = (s.progress.pausedSeconds ?? 0) + max(0, now - at)
            }
            s.progress.paused = nil
            s.progress.pausedAt = nil
            return true
        }
    }

    /// Ends the pass in progress without completing it; the next one is due an interval from now.
    func cancel() throws(ControlRefusal) -> String {
        let now = clock.now()
        let done = index.change { i in
            state.change { s -> Int? in
                guard s.progress.passStartedAt != nil else { return nil }
                let d = s.progress.filesDone
                s.progress.passStartedAt = nil
                s.progress.cursor = nil
                s.progress.pausedSeconds = nil
                s.progress.lastCancelledAt = now
                s.abort = true
                i.index.endPass()
                return d
            }
        }
        guard let done else { throw ControlRefusal(description: "no scrub pass is running") }
        persist(force: true)
        wake()
        let next = now + settings.config.scrubIntervalHours * 3600
        events.record(DaemonEvent(.scrubCancelled, .notice, "scrub pass cancelled", ["files": "\(done)"]))
        return "scrub pass cancelled after \(done) files; the next starts \(Self.iso(next)) ('kvscrubd scrub start' starts one now)"
    }

    /// Verifies the named checkpoints at once, outside any pass and unthrottled,
    /// and removes the corrupt ones under the same rule and brake as the scrub
    /// (waiting out the settle time before the second look). Names may be
    /// `<sha>.kv`, a bare sha, or a path in the cache directory; anything else
    /// is reported, not touched.
    func verifyNow(_ files: [String]) -> [FileVerdict] {
        guard let dir = directory.withLockedValue({ $0 }) else {
            return files.map { FileVerdict(file: $0, verdict: .missing, checksums: nil, problems: ["the cache directory is not available"], action: .init(.none)) }
        }
        let cacheDir = settings.config.cacheDir
        return files.map { arg -> FileVerdict in
            var name = arg
            if arg.contains("/") {
                let parent = (arg as NSString).deletingLastPathComponent
                guard (parent as NSString).standardizingPath == (cacheDir as NSString).standardizingPath else {
                    return FileVerdict(file: arg, verdict: .ignored, checksums: nil, problems: ["not in the cache directory \(cacheDir)"], action: .init(.none))
                }
                name = (arg as NSString).lastPathComponent
            }
            if !name.hasSuffix(".kv") { name += ".kv" }
            guard CheckpointName.isCheckpoint(name) else {
                return FileVerdict(file: arg, verdict: .ignored, checksums: nil, problems: ["not a checkpoint name (<40 hex digits>.kv)"], action: .init(.none))
            }
            // One rule for hex case, as the engine's: a name in either case finds the file the index knows.
            if !FileManager.default.fileExists(atPath: dir.pathOf(name)), let sha = CheckpointName.sha(of: name),
               let known = index.read({ $0.index.entries.values.first { $0.sha == sha }?.fileName }) {
                name = known
            }
            do {
                let (abi, recorded) = index.read { ($0.index.engineABI.generation, $0.index.records[name]) }
                let report = try dir.verify(name: name, with: Verifier(engine: abi, recorded: recorded))
                let now = clock.now()
                recordIfNew(report, now: now)
                index.change { $0.index.setVerdict(name, report.verdict) }
                state.change { $0.brake.noteVerified(now: now) }
                var action = FileVerdict.Action(.kept)
                if report.verdict == .corrupt { action = removeNow(report, in: dir) }
                return FileVerdict(file: name, verdict: FileVerdict.Outcome(report.verdict), checksums: report.checksums.rawValue,
                                   problems: report.problems.map { "\($0)" }, action: action)
            } catch let e as KVCError where e.errno == .noSuchFileOrDirectory {
                return FileVerdict(file: name, verdict: .missing, checksums: nil, problems: ["no such file in the cache directory"], action: .init(.none))
            } catch {
                return FileVerdict(file: name, verdict: .unreadable, checksums: nil, problems: ["\(error)"], action: .init(.none))
            }
        }
    }

    static func iso(_ t: Double) -> String {
        let f = ISO8601DateFormatter()
        return f.string(from: Date(timeIntervalSince1970: t))
    }
}
