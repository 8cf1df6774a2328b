import Foundation
import KVCFormat
import KVScrubControl
import KVScrubDaemon
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The metrics as Prometheus itself takes them: `promtool check metrics` on a
/// live daemon's /metrics, the shipped alert rules checked and unit-tested with
/// `promtool`, and a real Prometheus (Debian's package) scraping a running
/// daemon over its loopback listener until the corrupt-file alert fires.
@Suite(.serialized) struct PrometheusTests {
    static let rules = ManPageTests.repo + "/packaging/prometheus/kvscrubd-alerts.yml"
    static let ruleTests = ManPageTests.repo + "/packaging/prometheus/kvscrubd-alerts.test.yml"

    /// A TCP port nothing listens on right now (the kernel's pick, released at once).
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    static func promtool(_ args: [String], stdin: String? = nil) async throws -> Tool.Result {
        guard let stdin else { return try await Tool.runCapturing("/usr/bin/promtool", args) }
        let file = NSTemporaryDirectory() + "promtool-in-\(getpid())-\(UUID().uuidString)"
        try stdin.write(toFile: file, atomically: true, encoding: .utf8)
        defer { unlink(file) }
        return try await Tool.runCapturing("/bin/sh", ["-c", "/usr/bin/promtool \(args.joined(separator: " ")) < '\(file)'"])
    }

    @Test func liveMetrics_passPromtool_withHelpOnEveryFamily_andBuildInfo() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        _ = try Damage.store(cache, version: 1, seed: 5)
        let bad = try Damage.store(cache, version: 2, seed: 6)
        Damage.edit(bad) { $0[$0.count / 2] ^= 1 }
        let port = Self.freePort()
        let d = try await DaemonProcess(root: root, extra: ["--metrics-listen", "127.0.0.1:\(port)", "--scrub-rate-mbps", "0",
                                                      "--removal-settle-seconds", "0.2", "--scrub-new-file-delay", "0"], cacheDir: cache)
        try await waitUntil("the corrupt file removed", timeout: 20, daemon: d) { try d.status().counters.corruptRemoved == 1 }
        let http = try OperateTests.httpGet(port: port, path: "/metrics")
        #expect(http.status == 200)
        let check = try await Self.promtool(["check", "metrics"], stdin: http.body)
        #expect(check.status == 0 && check.stdout.isEmpty && check.stderr.isEmpty, "\(check.stdout)\(check.stderr)")
        // Every family has HELP and TYPE; build_info carries the version.
        let families = Set(http.body.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] })
        let helped = Set(http.body.split(separator: "\n").filter { $0.hasPrefix("# HELP ") }.map { $0.split(separator: " ")[2] })
        #expect(families == helped && families.count >= 25, "\(families.symmetricDifference(helped))")
        #expect(http.body.contains("kvscrubd_build_info{version=\"\(DaemonVersion.string)\"} 1"))
        #expect(!families.contains { !$0.hasSuffix("_total") && http.body.contains("# TYPE \($0) counter") })
        await d.stop()
    }

    @Test func shippedAlertRules_passPromtoolCheck_andTheirUnitTests() async throws {
        let check = try await Self.promtool(["check", "rules", Self.rules])
        #expect(check.status == 0, "\(check.stdout)\(check.stderr)")
        #expect(check.stdout.contains("SUCCESS: 7 rules found"), "\(check.stdout)")
        let test = try await Self.promtool(["test", "rules", Self.ruleTests])
        #expect(test.status == 0 && test.stdout.contains("SUCCESS"), "\(test.stdout)\(test.stderr)")
    }

    /// Debian's Prometheus scrapes the daemon every second with the shipped rules; a corrupt
    /// checkpoint found by the daemon makes KVScrubdCorruptCheckpointFound fire.
    @Test func aRealPrometheus_scrapesTheDaemon_andTheCorruptFileAlertFires() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        let good = try Damage.store(cache, version: 2, seed: 7)
        let metricsPort = Self.freePort()
        let d = try await DaemonProcess(root: root, extra: ["--metrics-listen", "127.0.0.1:\(metricsPort)", "--scrub-rate-mbps", "0",
                                                      "--removal-settle-seconds", "0.2", "--scrub-new-file-delay", "0"], cacheDir: cache)
        let promPort = Self.freePort()
        let config = root.file("prometheus.yml")
        try """
            global:
              scrape_interval: 1s
              evaluation_interval: 1s
            rule_files:
              - \(Self.rules)
            scrape_configs:
              - job_name: kvscrubd
                static_configs:
                  - targets: ['127.0.0.1:\(metricsPort)']
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let prom = Process()
        prom.executableURL = URL(fileURLWithPath: "/usr/bin/prometheus")
        prom.arguments = ["--config.file=\(config)", "--storage.tsdb.path=\(root.file("tsdb"))",
                          "--web.listen-address=127.0.0.1:\(promPort)", "--log.level=warn"]
        prom.standardOutput = FileHandle.nullDevice
        prom.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try prom.run()
        defer { prom.terminate(); prom.waitUntilExit() }
        func api(_ path: String) -> String { (try? OperateTests.httpGet(port: promPort, path: path).body) ?? "" }
        // Scraped at least once with the counter at 0, so the rise is seen as an increase.
        try await waitUntil("Prometheus scrapes the daemon", timeout: 60) {
            api("/api/v1/query?query=kvscrubd_corrupt_found_total%7Bregion%3D%22payload%22%7D").contains("\"value\":[")
        }
        #expect(api("/api/v1/query?query=up%7Bjob%3D%22kvscrubd%22%7D").contains("\"1\"]"))
        #expect(!api("/api/v1/alerts").contains("KVScrubdCorruptCheckpointFound"))
        // A damaged checkpoint arrives whole (made aside, then renamed in, as a store is):
        // damaging it in place after it arrived would race the daemon's first look at it.
        let side = root.file("side")
        try FileManager.default.createDirectory(atPath: side, withIntermediateDirectories: true)
        let made = try Damage.store(side, version: 2, seed: 8)
        Damage.edit(made) { $0[$0.count / 2] ^= 1 }
        #expect(rename(made, cache + "/" + (made as NSString).lastPathComponent) == 0)
        try await waitUntil("the daemon removes it", timeout: 60, daemon: d) { try d.status().counters.corruptRemoved == 1 }
        try await waitUntil("the alert fires", timeout: 60) {
            let alerts = api("/api/v1/alerts")
            return alerts.contains("\"alertname\":\"KVScrubdCorruptCheckpointFound\"") && alerts.contains("\"state\":\"firing\"")
        }
        let alerts = api("/api/v1/alerts")
        #expect(alerts.contains("\"region\":\"payload\""), "\(alerts)")
        #expect(!alerts.contains("KVScrubdDown"))
        #expect(FileManager.default.fileExists(atPath: good))
        await d.stop()
    }
}
