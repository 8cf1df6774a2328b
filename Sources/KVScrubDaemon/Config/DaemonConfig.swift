import Foundation
import KVCFormat

/// Every setting of the daemon, with its default. The config file and the
/// command line fill the same fields; flags override the file, and a reload
/// (SIGHUP) re-reads the file under the same flags.
public struct DaemonConfig: Sendable, Equatable {
    public var cacheDir = "/var/cache/ds4/kv"
    /// Byte budget in MiB, as ds4's --kv-disk-space-mb (default 4096). 0: no budget.
    public var budgetMB: UInt64 = 4096
    /// Start culling when the file system has less than this share free (percent); nil: off.
    public var freeSpaceStartPercent: Double?
    /// ...and stop once this share is free again (must be above the start).
    public var freeSpaceStopPercent: Double?
    /// How often scores are re-evaluated without any event (hit decay moves them).
    public var evictIntervalSeconds: Double = 60
    /// Decide and log, remove nothing (neither evictions nor corrupt files).
    public var dryRun = false
    /// Every file is re-verified at least this often.
    public var scrubIntervalHours: Double = 24
    /// Scrub read rate limit, MB/s (10^6 bytes). 0: unlimited.
    public var scrubRateMBps: Double = 50
    /// A new file is verified this long after it arrives (still in page cache, and the engine is done with it).
    public var scrubNewFileDelaySeconds: Double = 2
    /// Move corrupt files here (same file system) instead of removing them.
    public var quarantineDir: String?
    public var socketPath = "/run/kvscrubd/kvscrubd.sock"
    /// Octal permission bits of the control socket.
    public var socketMode: UInt32 = 0o660
    public var socketGroup: String?
    /// Where the scrub progress and counters persist (never inside the cache directory).
    public var stateDir = "/var/lib/kvscrubd"
    public var logLevel = "info"
    /// Members of this group may change the daemon's work over the socket (scrub control, reload, evict now).
    public var adminGroup: String?
    /// Loopback address and port of the optional HTTP /metrics listener ("127.0.0.1:9477"); nil: off.
    public var metricsListen: String?
    /// An evicted checkpoint the engine writes again within this many hours counts as a regret.
    public var regretWindowHours: Double = 6
    /// How long `kvscrubd history` keeps removals, quarantines and evictions.
    public var historyDays: Double = 90
    /// The generation of the engine beside us (`engine_payload_abi`, header byte 20, and
    /// `engine_payload_version`): `auto` learns each from the newest checkpoint.
    public var engine: GenerationSetting = .auto
    /// A file found corrupt is verified again only once it has been left alone this long (the engine may be rewriting it).
    public var removalSettleSeconds: Double = 5
    /// More proven-corrupt files than this in an hour stop removals.
    public var removalBrake: RemovalBrake.Limit = .standard
    /// What happens to proven-corrupt files while the brake is engaged: kept where they are (the
    /// default), or moved to the brake's quarantine under the state directory (an operator's choice).
    public var removalBrakeAction: RemovalBrake.Action = .keep
    /// A generation other than the engine's in force, with no file created or restored for this
    /// many hours since the engine in force wrote one, is reclaimed (nil: `off`).
    public var supersededGraceHours: Double? = 24
    /// A temporary file an engine left (`<sha>.kv.tmp.<pid>`, `<name>.tmp.XXXXXX`) unmodified for this
    /// many minutes, whose writer is not running, is removed (nil: `off`).
    public var orphanTempMinutes: Double? = 60

    public init() {}

    /// The settings a reload may change; the rest need a restart.
    static let reloadable: Set<String> = [
        "budget_mb", "free_space_start_percent", "free_space_stop_percent", "evict_interval_seconds", "dry_run",
        "scrub_interval_hours", "scrub_rate_mb_per_s", "scrub_new_file_delay_seconds", "quarantine_dir", "log_level",
        "admin_group", "regret_window_hours", "engine_payload_abi", "engine_payload_version", "removal_settle_seconds", "removal_brake",
        "removal_brake_action", "superseded_grace_hours", "orphan_temp_minutes",
    ]

    /// Applies `key = value` pairs (from the file or from flags), naming the key in any error.
    public mutating func apply(_ pairs: [(String, String)], source: String) throws(ConfigError) {
        for (key, value) in pairs { try apply(key: key, value: value, source: source) }
        try validate(source: source)
    }

    mutating func apply(key: String, value: String, source: String) throws(ConfigError) {
        func number(_ v: String) throws(ConfigError) -> Double {
            guard let d = Double(v), d.isFinite, d >= 0 else { throw ConfigError(source, key, "expected a non-negative number, got '\(v)'") }
            return d
        }
        func bool(_ v: String) throws(ConfigError) -> Bool {
            switch v.lowercased() {
            case "true", "yes", "on", "1": return true
            case "false", "no", "off", "0": return false
            default: throw ConfigError(source, key, "expected true or false, got '\(v)'")
            }
        }
        func path(_ v: String) throws(ConfigError) -> String {
            guard v.hasPrefix("/") else { throw ConfigError(source, key, "expected an absolute path, got '\(v)'") }
            return v
        }
        switch key {
        case "cache_dir": cacheDir = try path(value)
        case "budget_mb":
            guard let n = UInt64(value), n <= UInt64.max >> 20 else { throw ConfigError(source, key, "expected a whole number of MiB, got '\(value)'") }
            budgetMB = n
        case "free_space_start_percent": freeSpaceStartPercent = value.isEmpty ? nil : try number(value)
        case "free_space_stop_percent": freeSpaceStopPercent = value.isEmpty ? nil : try number(value)
        case "evict_interval_seconds": evictIntervalSeconds = try number(value)
        case "dry_run": dryRun = try bool(value)
        case "scrub_interval_hours": scrubIntervalHours = try number(value)
        case "scrub_rate_mb_per_s": scrubRateMBps = try number(value)
        case "scrub_new_file_delay_seconds": scrubNewFileDelaySeconds = try number(value)
        case "quarantine_dir": quarantineDir = value.isEmpty ? nil : try path(value)
        case "socket_path": socketPath = try path(value)
        case "socket_mode":
            guard let m = UInt32(value, radix: 8), m <= 0o777 else { throw ConfigError(source, key, "expected octal permissions like 0660, got '\(value)'") }
            socketMode = m
        case "socket_group": socketGroup = value.isEmpty ? nil : value
        case "state_dir": stateDir = try path(value)
        case "admin_group": adminGroup = value.isEmpty ? nil : value
        case "metrics_listen":
            if value.isEmpty { metricsListen = nil; break }
            guard let (host, _) = Self.splitHostPort(value) else {
                throw ConfigError(source, key, "expected a loopback address and port like 127.0.0.1:9477 or [::1]:9477, got '\(value)'")
            }
            guard host == "localhost" || host == "::1" || host.hasPrefix("127.") else {
                throw ConfigError(source, key, "must be a loopback address (127.x.x.x, ::1 or localhost): the listener has no authentication; got '\(host)'")
            }
            metricsListen = value
        case "regret_window_hours": regretWindowHours = try number(value)
        case "history_days": historyDays = try number(value)
        case "engine_payload_abi":
            guard let abi = EngineABI(parsing: value) else { throw ConfigError(source, key, "expected auto or a number from 0 to 255, got '\(value)'") }
            engine.abi = abi
        case "engine_payload_version":
            guard let pv = GenerationSetting.parsePayloadVersion(value) else {
                throw ConfigError(source, key, "expected auto or a payload version number (2 for ds4 from e8e8779, 1 before it), got '\(value)'")
            }
            engine.payloadVersion = pv
        case "removal_settle_seconds": removalSettleSeconds = try number(value)
        case "superseded_grace_hours": supersededGraceHours = value == "off" ? nil : try number(value)
        case "orphan_temp_minutes": orphanTempMinutes = value == "off" ? nil : try number(value)
        case "removal_brake_action":
            guard let action = RemovalBrake.Action(rawValue: value) else {
                throw ConfigError(source, key, "expected keep (corrupt files stay where they are) or quarantine, got '\(value)'")
            }
            removalBrakeAction = action
        case "removal_brake":
            guard let limit = RemovalBrake.Limit(parsing: value) else {
                throw ConfigError(source, key, "expected a number of files, a percentage, both (5,5%: whichever is larger) or off, got '\(value)'")
            }
            removalBrake = limit
        case "log_level":
            guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(value) else {
                throw ConfigError(source, key, "expected trace, debug, info, notice, warning, error or critical, got '\(value)'")
            }
            logLevel = value
        default:
            throw ConfigError(source, key, "unknown setting")
        }
    }

    func validate(source: String) throws(ConfigError) {
        if let start = freeSpaceStartPercent {
            guard start < 100 else { throw ConfigError(source, "free_space_start_percent", "must be below 100") }
            guard let stop = freeSpaceStopPercent, stop > start, stop <= 100 else {
                throw ConfigError(source, "free_space_stop_percent", "must be set, above free_space_start_percent and at most 100 when culling by free space")
            }
        }
        guard evictIntervalSeconds >= 1 else { throw ConfigError(source, "evict_interval_seconds", "must be at least 1") }
        guard scrubIntervalHours > 0 else { throw ConfigError(source, "scrub_interval_hours", "must be above 0") }
        if let q = quarantineDir, q == cacheDir {
            throw ConfigError(source, "quarantine_dir", "must not be the cache directory")
        }
        if stateDir == cacheDir { throw ConfigError(source, "state_dir", "must not be the cache directory") }
    }

    /// Reads a config file: YAML, a flat mapping of the keys above. Unknown keys are errors, so a typo is not silently ignored.
    public static func pairs(fromFile path: String) throws(ConfigError) -> [(String, String)] {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigError(path, nil, "cannot read: \(error.localizedDescription)")
        }
        return try pairs(fromYAML: text, source: path)
    }

    /// Parses a config file's text; `source` names it in errors.
    public static func pairs(fromYAML text: String, source path: String) throws(ConfigError) -> [(String, String)] {
        let mapping: FlatYAMLMapping
        do { mapping = try FlatYAMLMapping(parsing: text) } catch {
            throw ConfigError(path, nil, error.description)
        }
        return mapping.entries.map { ($0.key, $0.value) }
    }

    /// The file's settings over the defaults, then the flags over both.
    public static func resolve(file: String?, flags: [(String, String)]) throws(ConfigError) -> DaemonConfig {
        var c = DaemonConfig()
        if let file { try c.apply(try pairs(fromFile: file), source: file) }
        try c.apply(flags, source: "command line")
        return c
    }

    /// A setting a reload cannot take: its key, and how to compare and carry its value.
    private struct RestartOnlySetting {
        let key: String
        let differs: (DaemonConfig, DaemonConfig) -> Bool
        let carry: (inout DaemonConfig, DaemonConfig) -> Void
        init<T: Equatable>(_ key: String, _ path: WritableKeyPath<DaemonConfig, T>) {
            self.key = key
            differs = { $0[keyPath: path] != $1[keyPath: path] }
            carry = { $0[keyPath: path] = $1[keyPath: path] }
        }
    }

    /// The one list of settings that change only on restart (kvscrubd.conf(5) says "Restart to change." for each).
    private static var restartOnlySettings: [RestartOnlySetting] {
        [RestartOnlySetting("cache_dir", \.cacheDir), RestartOnlySetting("socket_path", \.socketPath),
         RestartOnlySetting("socket_mode", \.socketMode), RestartOnlySetting("socket_group", \.socketGroup),
         RestartOnlySetting("state_dir", \.stateDir), RestartOnlySetting("metrics_listen", \.metricsListen)]
    }

    /// The keys of the settings that change only on restart.
    public static var restartOnlyKeys: [String] { restartOnlySettings.map(\.key) }

    /// Keys whose new value a reload cannot take (the daemon keeps the old value and says so).
    public func restartOnlyChanges(to new: DaemonConfig) -> [String] {
        Self.restartOnlySettings.filter { $0.differs(self, new) }.map(\.key)
    }

    /// Takes `old`'s values for the settings that change only on restart: what a reload applies.
    public mutating func keepRestartOnlySettings(of old: DaemonConfig) {
        for setting in Self.restartOnlySettings { setting.carry(&self, old) }
    }

    /// "127.0.0.1:9477" or "[::1]:9477" into host and port.
    public static func splitHostPort(_ s: String) -> (String, Int)? {
        let host: Substring, port: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]"), s[s.index(after: close)...].hasPrefix(":") else { return nil }
            host = s[s.index(after: s.startIndex)..<close]
            port = s[s.index(close, offsetBy: 2)...]
        } else {
            guard let colon = s.lastIndex(of: ":") else { return nil }
            host = s[..<colon]
            port = s[s.index(after: colon)...]
        }
        guard !host.isEmpty, let p = Int(port), (1...65535).contains(p) else { return nil }
        return (String(host), p)
    }

    public var budgetBytes: UInt64 { budgetMB << 20 }

    /// Where the removal brake puts proven-corrupt files: under the state directory, never the cache.
    public var brakeQuarantineDir: String { stateDir + "/quarantine" }
}

public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public let source: String
    public let key: String?
    public let detail: String
    init(_ source: String, _ key: String?, _ detail: String) {
        self.source = source
        self.key = key
        self.detail = detail
    }
    public var description: String { "\(source): " + (key.map { "\($0): " } ?? "") + detail }
}
