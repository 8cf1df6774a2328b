import Foundation
import Testing
import KVCFormat
import KVScrubDaemon

@Suite struct ConfigTests {
    static let repo = ManPageTests.repo
    static let keys = ["cache_dir", "budget_mb", "free_space_start_percent", "free_space_stop_percent", "evict_interval_seconds",
                       "dry_run", "scrub_interval_hours", "scrub_rate_mb_per_s", "scrub_new_file_delay_seconds", "quarantine_dir",
                       "socket_path", "socket_mode", "socket_group", "state_dir", "log_level", "admin_group", "metrics_listen",
                       "regret_window_hours", "engine_payload_abi", "removal_settle_seconds", "removal_brake"]

    @Test func exampleConfig_parses_andEqualsTheDefaults() async throws {
        let c = try DaemonConfig.resolve(file: Self.repo + "/packaging/kvscrubd.conf", flags: [])
        #expect(c == DaemonConfig())
    }

    @Test func everySetting_isDocumented_andInTheExample() async throws {
        let man = try ManPageTests.manText("kvscrubd.conf.5")
        let example = try String(contentsOfFile: Self.repo + "/packaging/kvscrubd.conf", encoding: .utf8)
        for k in Self.keys {
            #expect(man.contains(".B \(k)"), "\(k) missing from kvscrubd.conf(5)")
            #expect(example.contains("\(k):"), "\(k) missing from packaging/kvscrubd.conf")
            // And the daemon knows it: an unknown key would be an error.
            var c = DaemonConfig()
            #expect(throws: Never.self) { try c.apply([(k, Self.sample(k))], source: "test") }
        }
    }

    @Test func restartOnlySettings_areTheOnesTheManPageSaysSo_andAReloadKeepsEachOldValue() async throws {
        // The keys kvscrubd.conf(5) marks "Restart to change.": each entry runs from its .TP to the next.
        let man = try String(contentsOfFile: Self.repo + "/man/kvscrubd.conf.5", encoding: .utf8)
        let marked = man.components(separatedBy: ".TP\n").dropFirst().compactMap { entry -> String? in
            guard entry.contains("Restart to change."), entry.hasPrefix(".B ") else { return nil }
            return String(entry.dropFirst(3).prefix { $0 != "\n" && $0 != " " })
        }
        #expect(Set(marked) == Set(DaemonConfig.restartOnlyKeys), "man page: \(marked.sorted()), daemon: \(DaemonConfig.restartOnlyKeys.sorted())")
        for key in DaemonConfig.restartOnlyKeys {
            let old = DaemonConfig()
            var new = old
            try new.apply([(key, Self.sample(key))], source: "test")
            #expect(old.restartOnlyChanges(to: new) == [key], "\(key)")
            new.keepRestartOnlySettings(of: old)
            #expect(new == old, "\(key): a reload keeps the old value")
        }
        // A reloadable setting is neither reported nor carried back.
        var reloadable = DaemonConfig()
        try reloadable.apply([("budget_mb", "7")], source: "test")
        #expect(DaemonConfig().restartOnlyChanges(to: reloadable).isEmpty)
        reloadable.keepRestartOnlySettings(of: DaemonConfig())
        #expect(reloadable.budgetMB == 7)
    }

    static func sample(_ k: String) -> String {
        switch k {
        case "cache_dir", "quarantine_dir", "socket_path": return "/tmp/x-\(k)"
        case "state_dir": return "/tmp/state"
        case "dry_run": return "true"
        case "socket_mode": return "0640"
        case "socket_group", "admin_group": return "root"
        case "metrics_listen": return "127.0.0.1:9477"
        case "log_level": return "debug"
        case "free_space_start_percent": return ""
        case "free_space_stop_percent": return ""
        default: return "7"
        }
    }

    @Test func metricsListen_acceptsLoopbackOnly_withAClearError() async throws {
        for ok in ["127.0.0.1:9477", "[::1]:9477", "localhost:1"] {
            var c = DaemonConfig()
            #expect(throws: Never.self) { try c.apply([("metrics_listen", ok)], source: "test") }
        }
        for (bad, says) in [("0.0.0.0:9477", "loopback"), ("10.0.0.1:80", "loopback"), ("127.0.0.1", "address and port"), ("127.0.0.1:0", "address and port")] {
            var c = DaemonConfig()
            #expect(performing: { try c.apply([("metrics_listen", bad)], source: "test") }, throws: { "\($0)".contains(says) && "\($0)".contains("metrics_listen") })
        }
    }

    @Test func engineABIAndRemovalSettings_parse() async throws {
        var c = DaemonConfig()
        try c.apply([("engine_payload_abi", "0"), ("engine_payload_version", "1"), ("removal_brake", "10,2%"),
                     ("removal_settle_seconds", "2.5")], source: "test")
        #expect(c.engine == GenerationSetting(abi: .fixed(0), payloadVersion: 1) && c.removalSettleSeconds == 2.5)
        #expect(c.removalBrake == RemovalBrake.Limit(files: 10, percent: 2))
        try c.apply([("engine_payload_abi", "auto"), ("engine_payload_version", "auto"), ("removal_brake", "off")], source: "test")
        #expect(c.engine == .auto && c.removalBrake.off)
        #expect(throws: ConfigError.self) { try c.apply([("engine_payload_version", "two")], source: "test") }
    }

    @Test func flagsOverrideTheFile_andErrorsNameTheKey() async throws {
        let dir = NSTemporaryDirectory() + "cfg-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = dir + "/k.conf"
        try "budget_mb: 10\nscrub_rate_mb_per_s: 3\n".write(toFile: f, atomically: true, encoding: .utf8)
        let c = try DaemonConfig.resolve(file: f, flags: [("budget_mb", "20")])
        #expect(c.budgetMB == 20 && c.scrubRateMBps == 3)
        for (bad, key) in [("budget_mb: -1", "budget_mb"), ("bogus: 1", "bogus"), ("dry_run: maybe", "dry_run"),
                           ("free_space_start_percent: 5", "free_space_stop_percent"), ("cache_dir: relative/path", "cache_dir"),
                           ("- a\n- b", "mapping"), ("budget_mb: \"unterminated", "YAML"), ("budget_mb: [", "budget_mb"), ("engine_payload_abi: two", "engine_payload_abi"),
                           ("engine_payload_abi: 256", "engine_payload_abi"), ("removal_brake: lots", "removal_brake"),
                           ("removal_settle_seconds: -1", "removal_settle_seconds")] {
            try bad.write(toFile: f, atomically: true, encoding: .utf8)
            #expect { try DaemonConfig.resolve(file: f, flags: []) } throws: { "\($0)".contains(key) }
        }
    }
}
