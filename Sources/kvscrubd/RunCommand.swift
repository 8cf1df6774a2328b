import ArgumentParser
import Foundation
import KVScrubDaemon
import KVScrubSystemd
import Logging

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the daemon in the foreground: watch, index, evict, scrub, serve the control socket.",
        discussion: """
            Settings come from the config file (default /etc/kvscrubd/kvscrubd.conf when it exists; see
            kvscrubd.conf(5)), and each flag overrides its setting. SIGHUP re-reads the file (a bad file is
            reported and the old settings stay); SIGTERM or SIGINT stop the daemon within about a second.
            Exit status: 0 after a clean stop; 2 on a configuration or start-up error.
            """)

    static let defaultConfigFile = "/etc/kvscrubd/kvscrubd.conf"

    @Option(name: .long, help: ArgumentHelp("Config file (YAML key: value).", valueName: "file"))
    var config: String?

    @Flag(name: .customLong("no-config"), help: "Read no config file, not even /etc/kvscrubd/kvscrubd.conf: defaults and flags only (the kvscrubd-agent user unit).")
    var noConfig = false

    @Option(name: .customLong("cache-dir"), help: ArgumentHelp("The engine's cache directory (cache_dir).", valueName: "dir"))
    var cacheDir: String?

    @Option(name: .customLong("budget-mb"), help: ArgumentHelp("Byte budget in MiB, 0 for none (budget_mb; default 4096).", valueName: "MiB"))
    var budgetMB: String?

    @Option(name: .customLong("free-space-start-percent"), help: ArgumentHelp("Start culling below this much free space (free_space_start_percent).", valueName: "pct"))
    var freeStart: String?

    @Option(name: .customLong("free-space-stop-percent"), help: ArgumentHelp("Stop culling at this much free space (free_space_stop_percent).", valueName: "pct"))
    var freeStop: String?

    @Option(name: .customLong("evict-interval"), help: ArgumentHelp("Re-evaluate scores this often, seconds (evict_interval_seconds; default 60).", valueName: "s"))
    var evictInterval: String?

    @Flag(name: .customLong("dry-run"), help: "Decide and log; remove nothing (dry_run).")
    var dryRun = false

    @Option(name: .customLong("scrub-interval-hours"), help: ArgumentHelp("Verify every file at least this often (scrub_interval_hours; default 24).", valueName: "h"))
    var scrubInterval: String?

    @Option(name: .customLong("scrub-rate-mbps"), help: ArgumentHelp("Scrub read limit in MB/s, 0 for none (scrub_rate_mb_per_s; default 50).", valueName: "MB/s"))
    var scrubRate: String?

    @Option(name: .customLong("scrub-new-file-delay"), help: ArgumentHelp("Verify new files this many seconds after they arrive (scrub_new_file_delay_seconds; default 2).", valueName: "s"))
    var newFileDelay: String?

    @Option(name: .long, help: ArgumentHelp("Move corrupt files into this directory instead of removing them (quarantine_dir).", valueName: "dir"))
    var quarantine: String?

    @Option(name: .long, help: ArgumentHelp("Control socket path (socket_path; default /run/kvscrubd/kvscrubd.sock).", valueName: "path"))
    var socket: String?

    @Option(name: .customLong("socket-mode"), help: ArgumentHelp("Control socket permissions, octal (socket_mode; default 0660).", valueName: "mode"))
    var socketMode: String?

    @Option(name: .customLong("socket-group"), help: ArgumentHelp("Group owning the control socket (socket_group).", valueName: "group"))
    var socketGroup: String?

    @Option(name: .customLong("state-dir"), help: ArgumentHelp("Where scrub progress and counters persist (state_dir; default /var/lib/kvscrubd).", valueName: "dir"))
    var stateDir: String?

    @Option(name: .customLong("admin-group"), help: ArgumentHelp("Members may change the daemon's work over the socket (admin_group).", valueName: "group"))
    var adminGroup: String?

    @Option(name: .customLong("metrics-listen"), help: ArgumentHelp("Serve /metrics over HTTP on this loopback address:port, e.g. 127.0.0.1:9477 (metrics_listen; default off).", valueName: "addr:port"))
    var metricsListen: String?

    @Option(name: .customLong("regret-window-hours"), help: ArgumentHelp("An evicted file written again within this many hours is a regret (regret_window_hours; default 6).", valueName: "h"))
    var regretWindow: String?

    @Option(name: .customLong("history-days"), help: ArgumentHelp("Keep removals, quarantines and evictions this many days for 'kvscrubd history' (history_days; default 90).", valueName: "days"))
    var historyDays: String?

    @Option(name: .customLong("engine-abi"), help: ArgumentHelp("Payload ABI (header byte 20) of the engine beside us: auto learns it from the newest checkpoint; 2 is ds4 from e8e8779, 0 ds4 before it and PR #146 (engine_payload_abi; default auto).", valueName: "auto|N"))
    var engineABI: String?

    @Option(name: .customLong("engine-payload-version"), help: ArgumentHelp("DSV4 payload version of the engine beside us: auto learns it with the ABI; 2 is ds4 from e8e8779, 1 before it (engine_payload_version; default auto).", valueName: "auto|N"))
    var enginePayloadVersion: String?

    @Option(name: .customLong("removal-settle-seconds"), help: ArgumentHelp("A corrupt file is verified again, and only then removed, once nothing has changed it for this long (removal_settle_seconds; default 5).", valueName: "s"))
    var removalSettle: String?

    @Option(name: .customLong("removal-brake"), help: ArgumentHelp("Stop removing past this many proven-corrupt files in an hour: files, percent of files verified, both (the larger), or off (removal_brake; default 5,5%).", valueName: "N,P%"))
    var removalBrake: String?

    @Option(name: .customLong("superseded-grace-hours"), help: ArgumentHelp("Reclaim the files of an engine generation the engine in force has replaced once none was created or restored for this long (superseded_grace_hours; default 24; off).", valueName: "h|off"))
    var supersededGrace: String?

    @Option(name: .customLong("orphan-temp-minutes"), help: ArgumentHelp("Remove a temporary file an engine left behind once unmodified this long with its writer gone (orphan_temp_minutes; default 60; off).", valueName: "min|off"))
    var orphanTempMinutes: String?

    @Option(name: .customLong("removal-brake-action"), help: ArgumentHelp("While the brake is engaged, proven-corrupt files stay where they are (keep) or move to the quarantine under the state directory (quarantine) (removal_brake_action; default keep).", valueName: "keep|quarantine"))
    var removalBrakeAction: String?

    @Option(name: .customLong("log-level"), help: ArgumentHelp("trace, debug, info, notice, warning, error (log_level; default info).", valueName: "level"))
    var logLevel: String?

    var flagPairs: [(String, String)] {
        var p: [(String, String)] = []
        func add(_ k: String, _ v: String?) { if let v { p.append((k, v)) } }
        add("cache_dir", cacheDir.map(absolute))
        add("budget_mb", budgetMB)
        add("free_space_start_percent", freeStart)
        add("free_space_stop_percent", freeStop)
        add("evict_interval_seconds", evictInterval)
        if dryRun { p.append(("dry_run", "true")) }
        add("scrub_interval_hours", scrubInterval)
        add("scrub_rate_mb_per_s", scrubRate)
        add("scrub_new_file_delay_seconds", newFileDelay)
        add("quarantine_dir", quarantine.map(absolute))
        add("socket_path", socket.map(absolute))
        add("socket_mode", socketMode)
        add("socket_group", socketGroup)
        add("state_dir", stateDir.map(absolute))
        add("log_level", logLevel)
        add("admin_group", adminGroup)
        add("metrics_listen", metricsListen)
        add("regret_window_hours", regretWindow)
        add("history_days", historyDays)
        add("engine_payload_abi", engineABI)
        add("engine_payload_version", enginePayloadVersion)
        add("removal_settle_seconds", removalSettle)
        add("removal_brake", removalBrake)
        add("removal_brake_action", removalBrakeAction)
        add("superseded_grace_hours", supersededGrace)
        add("orphan_temp_minutes", orphanTempMinutes)
        return p
    }

    func absolute(_ p: String) -> String {
        p.hasPrefix("/") ? p : FileManager.default.currentDirectoryPath + "/" + p
    }

    func run() async throws {
        let file = noConfig ? nil : config.map(absolute) ?? (FileManager.default.fileExists(atPath: Self.defaultConfigFile) ? Self.defaultConfigFile : nil)
        let resolved: DaemonConfig
        do {
            resolved = try DaemonConfig.resolve(file: file, flags: flagPairs)
        } catch {
            Output.error("\(error)")
            throw ExitCode(2)
        }
        // One switch for every handler: `reload` applies a new log_level to it.
        let levels = LogLevelSwitch(Logger.Level(rawValue: resolved.logLevel) ?? .info)
        // Under journald: native structured records. Anywhere else: readable lines on stderr.
        let journal = JournalLogHandler.journaldPresent
        LoggingSystem.bootstrap { label in
            SwitchedLogHandler(journal ? JournalLogHandler(identifier: "kvscrubd", messageID: DaemonEvent.Kind.messageID(forEvent:)) : StreamLogHandler.standardError(label: label),
                               levelSwitch: levels)
        }
        let logger = Logger(label: "kvscrubd")
        do {
            let daemon = try Daemon(config: resolved, configFile: file, flags: flagPairs, logger: logger, logLevels: levels)
            try await daemon.run()
        } catch {
            logger.critical("cannot run", metadata: ["error": "\(error)"])
            throw ExitCode(2)
        }
    }
}
