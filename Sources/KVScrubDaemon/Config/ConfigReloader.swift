import KVScrubSystemd
import Logging

/// SIGHUP (or `kvscrubd reload`): reads the config file again under the same
/// command-line flags and puts the result in force. A file that does not load
/// keeps the settings in force; a setting that changes only on a restart
/// keeps its value, and the reply says which. The lifecycle owns the
/// settings; this is the one way they change after start-up.
struct ConfigReloader: Sendable {
    let settings: DaemonSettings
    let configFile: String?
    let flags: [(String, String)]
    /// The handlers' level, which a reload sets from log_level (nil: levels are fixed, as in the fuzz target).
    let logLevels: LogLevelSwitch?
    let maintainer: IndexMaintainer
    let scrubber: Scrubber
    let notifier: SystemdNotifier
    let events: EventRecorder
    let logger: Logger

    /// Returns the settings kept until a restart, or why the file was not taken (the previous settings stay).
    /// Blocks (the file): call it off the event loop. The caller then says ready again (`ControlHandler.settingsReloaded`).
    func reload() -> Result<[String], ConfigError> {
        notifier.reloading()
        let old = settings.config
        do {
            var new = try DaemonConfig.resolve(file: configFile, flags: flags)
            let fixed = old.restartOnlyChanges(to: new)
            if !fixed.isEmpty {
                logger.warning("these settings change only on restart; keeping their current values",
                               metadata: ["settings": "\(fixed.joined(separator: ","))"])
                new.keepRestartOnlySettings(of: old)
            }
            settings.use(new)
            if new.logLevel != old.logLevel, let level = Logger.Level(rawValue: new.logLevel) {
                logLevels?.set(level)
            }
            maintainer.settingsChanged(from: old, to: new)
            scrubber.wake()
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
