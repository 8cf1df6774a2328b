import Foundation
import Testing
import KVCFormat
import KVCSimulation
import KVScrubSystemd
@testable import KVScrubDaemon
#if canImport(Glibc)
import Glibc
#endif

/// The packaged units under a real systemd (PID 1 in private namespaces,
/// with its own journald): socket activation, Type=notify status, structured
/// journal records of a corrupt-file removal, reload, the watchdog, stop.
final class SystemdNamespace {
    let pid: String
    let work: String

    init() async throws {
        let r = try await Tool.runCapturing(ManPageTests.repo + "/scripts/systemd-ns-start", [])
        guard r.status == 0, let pid = r.stdout.split(separator: "\n").last.map(String.init), Int(pid) != nil else {
            throw HarnessCommandFailed(command: "scripts/systemd-ns-start", stderr: r.stderr)
        }
        self.pid = pid
        work = try String(contentsOfFile: "/tmp/sdns-\(pid).work", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    deinit { _ = Tool.runBlocking(ManPageTests.repo + "/scripts/systemd-ns-stop", [pid]) }

    var units: String { work + "/units" }

    /// Runs a command inside the namespace.
    @discardableResult
    func run(_ args: [String]) async throws -> Tool.Result {
        try await Tool.runCapturing("/usr/bin/nsenter", ["-t", pid, "-a"] + args)
    }

    func show(_ unit: String, _ property: String) async throws -> String {
        try await run(["systemctl", "show", "-p", property, "--value", unit]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The host path of a file inside the namespace.
    func hostPath(_ p: String) -> String { "/proc/\(pid)/root" + p }
}

/// The package's user and groups, made on the host with the package's own
/// sysusers.d file for one test and taken away after it when they were not
/// there before (so scripts/test-deb still finds the host as it was).
final class PackageUsers {
    private let hadUser: Bool
    private let hadGroup: Bool

    init() async throws {
        hadUser = getpwnam("kvscrubd") != nil
        hadGroup = getgrnam("ds4-kv") != nil
        let r = try await Tool.runCapturing("/usr/bin/systemd-sysusers", [ManPageTests.repo + "/packaging/sysusers.d/kvscrubd.conf"])
        guard r.status == 0 else { throw HarnessCommandFailed(command: "systemd-sysusers", stderr: r.stderr) }
    }

    deinit {
        if !hadUser {
            _ = Tool.runBlocking("/usr/sbin/userdel", ["kvscrubd"])
            _ = Tool.runBlocking("/usr/sbin/groupdel", ["kvscrubd"])
        }
        if !hadGroup { _ = Tool.runBlocking("/usr/sbin/groupdel", ["ds4-kv"]) }
    }
}

/// One test's service: a systemd namespace, the package's users, and the
/// binary, units and cache staged under /opt (outside the unit's PrivateTmp
/// and ProtectHome), all taken away when the fixture goes.
final class ServiceFixture {
    let ns: SystemdNamespace
    let users: PackageUsers
    let stage: String
    let cache: String

    /// `extraArgs`: more options for `kvscrubd run` in the unit's ExecStart.
    init(watchdogSec: Int = 30, extraArgs: [String] = []) async throws {
        ns = try await SystemdNamespace()
        users = try await PackageUsers()
        stage = "/opt/kvscrubd-test/" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: stage, withIntermediateDirectories: true)
        cache = try await Self.install(ns, stage: stage, watchdogSec: watchdogSec, extraArgs: extraArgs).cache
    }

    deinit {
        try? FileManager.default.removeItem(atPath: stage)
        rmdir("/opt/kvscrubd-test")
    }

    /// Copies the built binary and the packaged units in, with a drop-in saying where the binary and the cache are.
    private static func install(_ ns: SystemdNamespace, stage: String, watchdogSec: Int, extraArgs: [String]) async throws -> (cache: String, bin: String) {
        let bin = stage + "/kvscrubd"
        try FileManager.default.copyItem(atPath: Tool.binDir + "/kvscrubd", toPath: bin)
        let cache = stage + "/cache"
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        _ = try await Tool.runCapturing("/bin/chown", ["root:ds4-kv", cache])
        _ = try await Tool.runCapturing("/bin/chmod", ["2770", cache])
        for u in ["kvscrubd.service", "kvscrubd.socket"] {
            try FileManager.default.copyItem(atPath: ManPageTests.repo + "/packaging/systemd/" + u, toPath: ns.units + "/" + u)
        }
        // The test's drop-in: where the binary and the cache are, and the test-only fault switch.
        let dropIn = ns.units + "/kvscrubd.service.d"
        try FileManager.default.createDirectory(atPath: dropIn, withIntermediateDirectories: true)
        try """
        [Service]
        ExecStart=
        ExecStart=\(bin) run --cache-dir \(cache) --scrub-new-file-delay 0.2 --log-level debug \(extraArgs.joined(separator: " "))
        ReadWritePaths=\(cache)
        Environment=KVSCRUBD_TEST_FAULTS=1
        WatchdogSec=\(watchdogSec)s
        RestartSec=1s
        """.write(toFile: dropIn + "/test.conf", atomically: true, encoding: .utf8)
        try await ns.run(["systemctl", "daemon-reload"])
        return (cache, bin)
    }
}

@Suite(.serialized) struct SystemdServiceTests {
    @Test func socketActivation_notify_journal_reload_stop() async throws {
        let f = try await ServiceFixture()
        defer { withExtendedLifetime(f) {} } // ARC may end a local's life at its last use
        let (ns, stage, cache) = (f.ns, f.stage, f.cache)
        await #expect(try ns.run(["systemctl", "start", "kvscrubd.socket"]).status == 0)
        await #expect(try ns.show("kvscrubd.service", "ActiveState") == "inactive")
        // A client connects: the service starts on demand and answers on the passed socket.
        let sock = ns.hostPath("/run/kvscrubd/kvscrubd.sock")
        try await waitUntil("the socket", timeout: 10) { FileManager.default.fileExists(atPath: sock) }
        var st = stat()
        #expect(lstat(sock, &st) == 0 && st.st_mode & 0o777 == 0o660)
        let status = try await Tool.run("kvscrubd", ["status", "--json", "--socket", sock])
        let journal = try await ns.run(["journalctl", "-u", "kvscrubd", "--no-pager"]).stdout
        #expect(status.status == 0, "\(status.stderr) \(journal)")
        await #expect(try ns.show("kvscrubd.service", "ActiveState") == "active")
        try await waitUntil("StatusText", timeout: 10) { try await ns.show("kvscrubd.service", "StatusText").contains("files, ") }
        await #expect(try ns.show("kvscrubd.service", "StatusText").contains("corrupt"))

        // A corrupt checkpoint arrives: removed, with structured journal fields.
        let side = stage + "/side"
        try FileManager.default.createDirectory(atPath: side, withIntermediateDirectories: true)
        let p = try CheckpointWriter(version: 2).store(
            in: side, text: Array("journal test".utf8), payload: SyntheticPayload(byteCount: 100_000, tokens: 2, ctxSize: 4096, seed: 1),
            metadata: .init(reason: .cold, modelID: 1, quantBits: 4, ctxSize: 4096, tokens: 2, createdAt: 1))
        var b = Array(FileManager.default.contents(atPath: p)!)
        b[68 + 12 + 50_000] ^= 1
        let name = String(p.split(separator: "/").last!)
        try Data(b).write(to: URL(fileURLWithPath: side + "/x"))
        rename(side + "/x", cache + "/" + name)
        try await waitUntil("the corrupt file removed", timeout: 15) { !FileManager.default.fileExists(atPath: cache + "/" + name) }
        let id = DaemonEvent.Kind.corruptRemoved.messageID!
        var records: [[String: Any]] = []
        try await waitUntil("the journal record", timeout: 10) {
            records = try await ns.run(["journalctl", "-u", "kvscrubd", "-o", "json", "MESSAGE_ID=\(id)", "--no-pager"]).stdout
                .split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            return !records.isEmpty
        }
        let r = try #require(records.first)
        #expect(r["KVSCRUB_FILE"] as? String == name)
        #expect(r["KVSCRUB_REGION"] as? String == "payload")
        #expect((r["KVSCRUB_EXPECTED_CRC"] as? String)?.hasPrefix("0x") == true)
        #expect(r["KVSCRUB_EXPECTED_CRC"] as? String != r["KVSCRUB_ACTUAL_CRC"] as? String)
        #expect(r["PRIORITY"] as? String == "4")
        #expect(r["SYSLOG_IDENTIFIER"] as? String == "kvscrubd")
        // The same search an operator types.
        let byRegion = try await ns.run(["journalctl", "-u", "kvscrubd", "KVSCRUB_REGION=payload", "--no-pager", "-q"]).stdout
        #expect(byRegion.contains("corrupt file removed"))
        // `journalctl -x` explains it from the packaged catalog. The catalog goes in through a bind
        // mount inside the namespace (the host's /usr/lib/systemd/catalog is left alone), and the
        // rebuilt database lands on the namespace's own /var/lib.
        let catalogDir = stage + "/catalog"
        try FileManager.default.createDirectory(atPath: catalogDir, withIntermediateDirectories: true)
        for f in (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/systemd/catalog")) ?? [] where f.hasSuffix(".catalog") {
            try? FileManager.default.copyItem(atPath: "/usr/lib/systemd/catalog/" + f, toPath: catalogDir + "/" + f)
        }
        try FileManager.default.copyItem(atPath: ManPageTests.repo + "/packaging/kvscrubd.catalog", toPath: catalogDir + "/kvscrubd.catalog")
        await #expect(try ns.run(["mount", "--bind", catalogDir, "/usr/lib/systemd/catalog"]).status == 0)
        await #expect(try ns.run(["journalctl", "--update-catalog"]).status == 0)
        let explained = try await ns.run(["journalctl", "-x", "-u", "kvscrubd", "MESSAGE_ID=\(id)", "--no-pager", "-q"]).stdout
        #expect(explained.contains("Subject: Corrupt KV checkpoint removed: \(name)"), "\(explained)")
        #expect(explained.contains("No good") || explained.contains("no good"), "\(explained)")

        // Reload: RELOADING=1 then READY=1; the service stays up.
        await #expect(try ns.run(["systemctl", "reload", "kvscrubd"]).status == 0)
        try await waitUntil("the reload logged", timeout: 10) {
            try await ns.run(["journalctl", "-u", "kvscrubd", "--no-pager", "-q"]).stdout.contains("configuration reloaded")
        }
        await #expect(try ns.show("kvscrubd.service", "ActiveState") == "active")

        // Stop: clean, and SIGTERM handled (not killed).
        await #expect(try ns.run(["systemctl", "stop", "kvscrubd.service"]).status == 0)
        await #expect(try ns.show("kvscrubd.service", "ActiveState") == "inactive")
        await #expect(try ns.show("kvscrubd.service", "Result") == "success")
    }

    @Test func watchdog_killsAndRestarts_aHungMaintenanceLoop() async throws {
        let f = try await ServiceFixture(watchdogSec: 2)
        defer { withExtendedLifetime(f) {} } // ARC may end a local's life at its last use
        let ns = f.ns
        await #expect(try ns.run(["systemctl", "start", "kvscrubd.service"]).status == 0)
        try await waitUntil("active", timeout: 10) { try await ns.show("kvscrubd.service", "ActiveState") == "active" }
        let mainPID = try await ns.show("kvscrubd.service", "MainPID")
        try await Task.sleep(for: .seconds(3)) // alive past one watchdog period: the loop feeds it
        await #expect(try ns.show("kvscrubd.service", "NRestarts") == "0")
        // Trapped by a daemon run with KVSCRUBD_TEST_FAULTS=1 (the fixture's unit sets it): the loop hangs.
        await #expect(try ns.run(["kill", "-USR2", mainPID]).status == 0)
        try await waitUntil("a watchdog restart", timeout: 20) { try await ns.show("kvscrubd.service", "NRestarts") != "0" }
        let log = try await ns.run(["journalctl", "-u", "kvscrubd", "--no-pager", "-q"]).stdout
        #expect(log.contains("Watchdog timeout"), "\(log.suffix(2000))")
        try await waitUntil("active again", timeout: 15) { try await ns.show("kvscrubd.service", "ActiveState") == "active" }
        await #expect(try ns.show("kvscrubd.service", "MainPID") != mainPID)
        try await ns.run(["systemctl", "stop", "kvscrubd.service"])
    }

    /// The packaged unit's sandbox (IPAddressDeny=any, IPAddressAllow=localhost, inet sockets
    /// allowed) lets the loopback metrics listener be scraped from the host.
    @Test func metricsListener_isReachableUnderThePackagedUnit() async throws {
        let port = PrometheusTests.freePort()
        let f = try await ServiceFixture(extraArgs: ["--metrics-listen", "127.0.0.1:\(port)"])
        defer { withExtendedLifetime(f) {} } // ARC may end a local's life at its last use
        let ns = f.ns
        await #expect(try ns.run(["systemctl", "start", "kvscrubd.service"]).status == 0)
        try await waitUntil("active", timeout: 10) { try await ns.show("kvscrubd.service", "ActiveState") == "active" }
        var body = ""
        do {
            try await waitUntil("/metrics answers", timeout: 15) {
                body = (try? OperateTests.httpGet(port: port, path: "/metrics"))?.body ?? ""
                return body.contains("kvscrubd_build_info")
            }
        } catch {
            Issue.record("\(error): \(try await ns.run(["journalctl", "-u", "kvscrubd", "--no-pager", "-q"]).stdout.suffix(2000))")
        }
        #expect(body.contains("# HELP kvscrubd_files "))
        await #expect(try ns.run(["systemctl", "stop", "kvscrubd.service"]).status == 0)
    }

    /// The shipped drop-in for the engine's unit parses cleanly on a stand-in engine unit
    /// (systemd-analyze reads drop-ins from SYSTEMD_UNIT_PATH; a misspelled key proves it does).
    @Test func engineDropIn_verifiesOnAnEngineUnit() async throws {
        let dir = NSTemporaryDirectory() + "engine-unit-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir + "/ds4.service.d", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "[Unit]\nDescription=engine\n[Service]\nExecStart=/bin/true\n".write(toFile: dir + "/ds4.service", atomically: true, encoding: .utf8)
        let dropIn = try String(contentsOfFile: ManPageTests.repo + "/packaging/examples/ds4-engine.kvscrubd.conf", encoding: .utf8)
        #expect(dropIn.contains("SupplementaryGroups=ds4-kv") && dropIn.contains("UMask=0007") && dropIn.contains("ReadWritePaths=/var/cache/ds4/kv"))
        func verify(_ text: String) async throws -> Tool.Result {
            try text.write(toFile: dir + "/ds4.service.d/kvscrubd.conf", atomically: true, encoding: .utf8)
            return try await Tool.runCapturing("/usr/bin/env", ["SYSTEMD_UNIT_PATH=\(dir):", "/usr/bin/systemd-analyze", "verify", dir + "/ds4.service"])
        }
        let good = try await verify(dropIn)
        #expect(good.status == 0 && good.stderr.isEmpty && good.stdout.isEmpty, "\(good.stderr)")
        let typo = try await verify(dropIn.replacingOccurrences(of: "UMask=", with: "UMsk="))
        #expect(typo.stderr.contains("Unknown key"), "the drop-in was not read: \(typo.stderr)")
    }

    @Test func catalog_explainsEveryMessageID() async throws {
        let catalog = try String(contentsOfFile: ManPageTests.repo + "/packaging/kvscrubd.catalog", encoding: .utf8)
        for event in DaemonEvent.Kind.allCases {
            guard let id = event.messageID else { continue }
            #expect(catalog.contains("-- \(id)\n"), "\(event.rawValue) has no catalog entry")
        }
    }

    @Test func serviceUnit_isHardened_scoringAtMost2() async throws {
        let r = try await Tool.runCapturing("/usr/bin/systemd-analyze", ["security", "--offline=yes", ManPageTests.repo + "/packaging/systemd/kvscrubd.service"])
        let line = try #require((r.stdout + r.stderr).split(separator: "\n").first { $0.contains("Overall exposure level") })
        let score = Double(line.split(separator: ":").last!.trimmingCharacters(in: .whitespaces).split(separator: " ").first!) ?? 99
        #expect(score <= 2.0, "\(line)")
    }
}
