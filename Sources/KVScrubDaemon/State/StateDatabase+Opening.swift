import Logging

extension StateDatabase {
    /// The daemon's database, in `state_dir`, reporting what goes wrong (a failed save, a damaged
    /// database replaced, saving again after failures) as events.
    convenience init(settings: DaemonSettings, events: EventRecorder, faults: TestFaults, snapshot: @escaping @Sendable () -> Snapshot) {
        let stateDir = settings.config.stateDir
        self.init(
            directory: stateDir, clock: settings.clock, faults: faults, historyDays: { settings.config.historyDays }, snapshot: snapshot,
            report: { what, error in
                events.record(DaemonEvent(.stateSaveFailed, .error, "cannot save state", ["what": "\(what)", "error": "\(error)"],
                                          counts: .error("\(what): \(error)")))
            },
            replaced: { to, error in
                events.record(DaemonEvent(.stateDBDamaged, .error,
                                          "the state database was damaged; moved aside and a new one started (recorded checksums are taken again)",
                                          ["path": "\(stateDir)/state.sqlite", "moved_to": "\(to)", "error": "\(error)"],
                                          counts: .error("state database damaged, moved to \(to): \(error)")))
            },
            recovered: { attempts in
                events.record(DaemonEvent(.stateSaveRecovered, .notice, "the state database is written again", ["failed_attempts": "\(attempts)"]))
            })
    }
}

extension StateDatabase.Opening {
    /// Says what opening the database did (unavailable, migrated, an unreadable old state file, a pass
    /// to resume), and returns what it held.
    func reported(to events: EventRecorder, logger: Logger, database: StateDatabase, stateDir: String) -> StateDatabase.Snapshot {
        if let why = unavailable {
            events.record(DaemonEvent(.stateDBUnavailable, .error, "cannot open the state database; running without it, and trying again at every save",
                                      ["path": "\(database.path)", "error": "\(why)"], counts: .error("open state database \(database.path): \(why)")))
        }
        if let from = migratedFrom {
            events.record(DaemonEvent(.stateMigrated, .notice, "migrated the state file into the state database",
                                      ["from": "\(from)", "to": "\(database.path)"]))
        }
        if let why = legacyUnreadable {
            logger.warning("state file unreadable; starting with fresh counters (kept as state.json.unreadable)",
                           metadata: ["path": "\(stateDir)/state.json", "error": "\(why)"])
        }
        if let scrub = snapshot.core?.scrub, scrub.passStartedAt != nil {
            logger.info("resuming the scrub pass", metadata: ["after": "\(scrub.cursor ?? "(start)")", "files_done": "\(scrub.filesDone)"])
        }
        return snapshot
    }
}
