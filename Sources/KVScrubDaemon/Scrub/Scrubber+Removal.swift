import Foundation
import KVCFormat
import KVScrubControl
import Logging

/// What the scrubber does with a corrupt verdict: the removal rule of
/// kvc-format.md revision 2, and the removal brake.
///
/// A first corrupt verdict proves something only if nothing touched the file
/// while it was read; otherwise the file is simply checked again shortly, as
/// a new arrival would be. An undisturbed verdict queues the file for a second
/// look, due once the file has been left alone for `removal_settle_seconds`
/// (a touch or tool-map rewrite in flight moves its mtime and ctime, and so
/// moves the due time). The second look (`CacheDirectory.removeIfCorrupt`)
/// reads the whole file again and must agree, on the same stamp; then the
/// brake decides: within its limit the file is unlinked (or moved to
/// `quarantine_dir` when one is set); past it the file stays where it is
/// (`removal_brake_action: keep`, the default) or goes to the brake's
/// quarantine under the state directory (`quarantine`), and stays where it
/// is when that fails. Every outcome is logged; the ones that remove or hold back a file
/// carry a MESSAGE_ID.
extension Scrubber {
    /// What became of a first corrupt verdict (`foundCorrupt`); `action` is what `scrub now` reports.
    enum FirstVerdictOutcome: Equatable {
        /// dry_run: logged and counted, nothing else.
        case keptDryRun
        /// The file changed while it was read: the verdict proves nothing; it is verified again soon.
        case checkedAgain
        /// Queued for the second look, once the file has been left alone for `settle` seconds.
        case awaitingSecondLook(settle: Double)

        var action: FileVerdict.Action {
            switch self {
            case .keptDryRun: .init(.kept, "kept (dry run)")
            case .checkedAgain: .init(.kept, "kept (the file changed while it was read; it is checked again)")
            case .awaitingSecondLook(let settle): .init(.pending, "pending: verified again once unchanged for \(DurationText.short(settle))")
            }
        }
    }

    /// A verdict of corrupt from the scrub (a pass or a new file). Returns what was done.
    @discardableResult
    func foundCorrupt(_ report: VerifyReport, partOfPass: Bool) -> FirstVerdictOutcome {
        let config = settings.config
        var meta = Self.metadata(report)
        if config.dryRun {
            if partOfPass { state.change { $0.progress.suspected = ($0.progress.suspected ?? 0) + 1 } }
            events.record(DaemonEvent(.corruptFound, .warning, "corrupt file found", meta))
            events.record(DaemonEvent(.wouldRemove, .notice, "would remove corrupt file (dry run)", meta,
                                      counts: .corrupt(region: report.corruptProblems.first?.region, removed: false, quarantined: false)),
                          changing: state) { $0.confirmedInPass(removed: false) }
            return .keptDryRun
        }
        guard report.unchangedDuringRead, let after = report.after else {
            events.record(DaemonEvent(.corruptUnconfirmed, .info, "corrupt verdict from a read the file changed under; checking it again shortly",
                                      meta, counts: .corruptUnconfirmed))
            fileArrived(report.name)
            return .checkedAgain
        }
        let due = after.lastChange + config.removalSettleSeconds
        firstVerdicts.withLockedValue { $0[report.name] = report }
        meta["settle_seconds"] = "\(config.removalSettleSeconds)"
        events.record(DaemonEvent(.corruptSuspected, .notice, "corrupt verdict; the file is verified again once left alone for the settle time", meta),
                      changing: state) {
            $0.pendingRemoval[report.name] = due
            if partOfPass { $0.suspectedInPass(report.name) }
        }
        persist(force: true) // a restart before the second look verifies the file again
        wake()
        return .awaitingSecondLook(settle: config.removalSettleSeconds)
    }

    /// The removal rule's second look and take-away, for a file queued by `foundCorrupt`. Returns what was done.
    @discardableResult
    func confirmRemoval(_ name: String, in dir: CacheDirectory, observer: (any ReadObserver)?) -> FileVerdict.Action {
        guard let first = firstVerdicts.withLockedValue({ $0.removeValue(forKey: name) }) else { return .init(.none, "none (nothing pending)") }
        state.change { $0.abort = false }
        do {
            let outcome = try secondLook(name, first: first, in: dir, observer: observer)
            if case .notSettled(let wait) = outcome {
                firstVerdicts.withLockedValue { $0[name] = first }
                let due = clock.now() + wait
                state.change { $0.pendingRemoval[name] = due }
                return .init(.pending, "pending: the file changed less than the settle time ago")
            }
            return settle(outcome, first: first)
        } catch is ScrubThrottle.ScrubStopped {
            // Stopped, paused or cancelled mid-read: the second look is due again, nothing was decided.
            firstVerdicts.withLockedValue { $0[name] = first }
            let due = clock.now() + 1
            state.change { $0.pendingRemoval[name] = due }
            return .init(.pending, "pending: interrupted")
        } catch {
            return cannotRemove(first, error)
        }
    }

    /// `scrub now`: the whole rule at once for a file just found corrupt, waiting out the settle time here.
    func removeNow(_ first: VerifyReport, in dir: CacheDirectory) -> FileVerdict.Action {
        let queued = foundCorrupt(first, partOfPass: false)
        guard case .awaitingSecondLook = queued else { return queued.action }
        // Taken off the scrub thread's queue: this caller does the second look itself.
        state.change { _ = $0.pendingRemoval.removeValue(forKey: first.name) }
        _ = firstVerdicts.withLockedValue { $0.removeValue(forKey: first.name) }
        do {
            for _ in 0..<20 {
                let outcome = try secondLook(first.name, first: first, in: dir, observer: nil)
                if case .notSettled(let wait) = outcome {
                    Thread.sleep(forTimeInterval: min(wait, 60))
                    continue
                }
                return settle(outcome, first: first)
            }
            return .init(.kept, "kept (the file kept changing; the scrub checks it again)")
        } catch {
            return cannotRemove(first, error)
        }
    }

    /// A removal that failed (the second look or the take-away could not be done): logged, counted, kept.
    private func cannotRemove(_ first: VerifyReport, _ error: any Error) -> FileVerdict.Action {
        events.record(DaemonEvent(.removeFailed, .error, "cannot remove corrupt file", Self.metadata(first).merging(["error": "\(error)"]) { $1 },
                                  counts: .error("remove corrupt \(first.name): \(error)")), changing: state) { s in
            // No further look comes: for the pass that found it, the file stays, suspect.
            s.secondLookSettled(first.name, confirmed: true, removed: false)
        }
        return .init(.kept, "kept (cannot remove: \(error))")
    }

    private func secondLook(_ name: String, first: VerifyReport, in dir: CacheDirectory,
                            observer: (any ReadObserver)?) throws -> CacheDirectory.SafeRemovalOutcome {
        let config = settings.config
        let (abi, recorded) = index.read { ($0.index.engineABI.generation, $0.index.records[name]) }
        let verifier = Verifier(engine: abi, recorded: recorded, observer: observer)
        let faults = self.faults
        return try dir.removeIfCorrupt(name: name, first: first, verifier: verifier, settle: config.removalSettleSeconds,
                                       now: { [clock] in clock.now() }, onStep: { faults.reached(.removal($0)) }) { report in
            let now = clock.now()
            let admitted = state.change { $0.brake.admitRemoval(now: now, limit: config.removalBrake) }
            if !admitted { brakeEngagedIfNew(report) }
            if !admitted && config.removalBrakeAction == .keep {
                return .keepInPlace(why: "held back by the removal brake; 'kvscrubd brake release' lets it be removed")
            }
            let target = admitted ? config.quarantineDir : config.brakeQuarantineDir
            guard let target else { return .unlink }
            do {
                return .quarantine(try .open(creating: target))
            } catch {
                events.record(DaemonEvent(.quarantineFailed, .error, "cannot open the quarantine directory; the corrupt file stays in place",
                                          ["path": "\(target)", "error": "\(error)"], counts: .error("open quarantine \(target): \(error)")))
                return nil
            }
        }
    }

    /// Logs the engagement once, loudly, with its own MESSAGE_ID.
    private func brakeEngagedIfNew(_ report: VerifyReport) {
        let (first, reason) = state.read { ($0.brake.heldBack == 1, $0.brake.reason ?? "") }
        guard first else { return }
        persist(force: true)
        let config = settings.config
        let what = config.removalBrakeAction == .keep ? "kept where they are" : "moved to \(config.brakeQuarantineDir)"
        events.record(DaemonEvent(.removalBrakeEngaged, .critical,
                                  "removal brake engaged: corrupt files are \(what), not removed, until an operator runs 'kvscrubd brake release'",
                                  ["reason": "\(reason)", "file": "\(report.name)", "action": "\(config.removalBrakeAction.rawValue)",
                                   "quarantine": "\(config.brakeQuarantineDir)"]))
    }

    /// Counts, logs and reports one outcome of the second look.
    private func settle(_ outcome: CacheDirectory.SafeRemovalOutcome, first: VerifyReport) -> FileVerdict.Action {
        let name = first.name
        switch outcome {
        case .removed(let r), .quarantined(let r, _), .keptInPlace(let r, _):
            var m = Self.metadata(r)
            let region = r.corruptProblems.first?.region
            var removed = true
            var action = FileVerdict.Action(.removed)
            var event = DaemonEvent.Kind.corruptRemoved
            var message = "corrupt file removed"
            if case .quarantined(_, let to) = outcome {
                m["quarantined_to"] = "\(to)"
                action = .init(.quarantined, "quarantined to \(to)")
                message = "corrupt file moved to quarantine"
            } else if case .keptInPlace(_, let why) = outcome {
                removed = false
                m["why"] = "\(why)"
                action = .init(.kept, "kept in place (\(why))")
                event = .corruptKept
                message = "corrupt file kept in place"
            }
            var quarantined = false
            if case .quarantined = outcome { quarantined = true }
            events.record(DaemonEvent(.corruptFound, .warning, "corrupt file found", m))
            events.record(DaemonEvent(event, .warning, message, m, counts: .corrupt(region: region, removed: removed, quarantined: quarantined)),
                          changing: index) { i in
                if removed { i.index.remove(name) }
                state.change { s in
                    s.confirmedInPass(removed: removed)
                    s.secondLookSettled(name, confirmed: true, removed: removed)
                }
            }
            var done = HistoryEvent.Action.removed
            var destination: String? = nil
            if case .quarantined(_, let to) = outcome { done = .quarantined; destination = to }
            if case .keptInPlace = outcome { done = .keptInPlace }
            let problem = r.corruptProblems.first
            database.enqueue([.history(HistoryEvent(at: clock.now(), action: done, file: name, bytes: r.fileSize,
                                                    cause: .corrupt, region: problem?.region.rawValue, detail: problem?.detail,
                                                    expectedCrc: problem?.expectedCRC, actualCrc: problem?.actualCRC,
                                                    destination: destination))])
            persist(force: true)
            return action
        case .notCorrupt(let r):
            events.record(DaemonEvent(.corruptUnconfirmed, .notice, "not corrupt on a second look after the file settled; kept",
                                      ["file": "\(name)", "verdict": "\(r.verdict.rawValue)"], counts: .corruptUnconfirmed), changing: index) { i in
                i.index.setVerdict(name, r.verdict)
                state.change { $0.secondLookSettled(name, confirmed: false, removed: false) }
            }
            return .init(.kept, "kept (not corrupt on a second look: \(r.verdict.rawValue))")
        case .changed:
            events.record(DaemonEvent(.corruptUnconfirmed, .info, "the file changed since its corrupt verdict; checking it again",
                                      ["file": "\(name)"], counts: .corruptUnconfirmed), changing: state) { s in
                s.secondLookSettled(name, confirmed: false, removed: false)
            }
            fileArrived(name)
            return .init(.kept, "kept (the file changed since the verdict; it is checked again)")
        case .notSettled:
            return .init(.pending)
        case .replaced, .vanished:
            state.change { $0.secondLookSettled(name, confirmed: false, removed: false) }
            logger.info("corrupt file was replaced or removed meanwhile", metadata: ["file": "\(name)"])
            return .init(.none, "none (replaced or removed meanwhile)")
        }
    }

    static func metadata(_ report: VerifyReport) -> Logger.Metadata {
        let first = report.corruptProblems.first
        var meta: Logger.Metadata = ["file": "\(report.name)", "region": "\(first?.region.rawValue ?? "unknown")",
                                     "detail": "\(first?.detail ?? "")", "bytes": "\(report.fileSize)"]
        if let e = first?.expectedCRC, let a = first?.actualCRC {
            meta["expected_crc"] = "\(String(format: "0x%08x", e))"
            meta["actual_crc"] = "\(String(format: "0x%08x", a))"
        }
        return meta
    }
}
