import Foundation
import Testing
import KVScrubSystemd
@testable import KVScrubDaemon
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// sd_notify for real, without systemd: the test binds the NOTIFY_SOCKET
/// datagram socket itself and reads what libsystemd sends from the daemon.
final class NotifySocket {
    let path: String
    let fd: Int32

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard rc == 0 else { throw Timeout(what: "bind \(path)") }
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd); unlink(path) }

    /// Messages received until `timeout` passes or `until` holds for one of them.
    func receive(timeout: Double, until: (String) -> Bool = { _ in false }) -> [String] {
        var out: [String] = []
        let deadline = Date().addingTimeInterval(timeout)
        var buf = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline {
            let n = recv(fd, &buf, buf.count, 0)
            if n > 0 {
                let m = String(decoding: buf[0..<n], as: UTF8.self)
                out.append(m)
                if until(m) { break }
            }
        }
        return out
    }
}

@Suite(.serialized) struct SystemdNotifyTests {
    func startDaemon(_ root: TempDir, env: [String: String]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Tool.binDir + "/kvscrubd")
        try FileManager.default.createDirectory(atPath: root.file("cache"), withIntermediateDirectories: true)
        p.arguments = ["run", "--cache-dir", root.file("cache"), "--state-dir", root.file("state"), "--socket", root.file("ctl.sock")]
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        p.standardError = FileHandle.nullDevice
        try p.run()
        return p
    }

    @Test func lifecycle_readyStatusReloadingStopping() async throws {
        let root = TempDir()
        let n = try NotifySocket(path: root.file("notify"))
        let d = try startDaemon(root, env: ["NOTIFY_SOCKET": n.path])
        let first = n.receive(timeout: 15) { $0.contains("READY=1") }
        let ready = try #require(first.first { $0.contains("READY=1") })
        #expect(ready.contains("STATUS=0 files, 0 B of 4.0 GiB"), "\(ready)")
        // The socket listens by the time READY=1 is sent.
        #expect((try? KVScrubDaemonClient.ping(root.file("ctl.sock"))) == true)
        kill(d.processIdentifier, SIGHUP)
        let reload = n.receive(timeout: 10) { $0.contains("READY=1") }
        #expect(reload.contains { $0.contains("RELOADING=1") && $0.contains("MONOTONIC_USEC=") })
        #expect(reload.last?.contains("READY=1") == true)
        kill(d.processIdentifier, SIGTERM)
        let stop = n.receive(timeout: 10) { $0.contains("STOPPING=1") }
        #expect(stop.contains { $0.contains("STOPPING=1") })
        await d.exited()
        #expect(d.terminationStatus == 0)
    }

    @Test func watchdog_isFedFromTheMaintenanceLoop_andStopsWhenItHangs() async throws {
        let root = TempDir()
        let n = try NotifySocket(path: root.file("notify"))
        let d = try startDaemon(root, env: ["NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "400000", "KVSCRUBD_TEST_FAULTS": "1"])
        defer { if d.isRunning { kill(d.processIdentifier, SIGKILL); d.waitUntilExit() } }
        _ = n.receive(timeout: 15) { $0.contains("READY=1") }
        let fed = n.receive(timeout: 1.5).filter { $0.contains("WATCHDOG=1") }
        #expect(fed.count >= 4, "WATCHDOG=1 every 200 ms, got \(fed.count) in 1.5 s")
        kill(d.processIdentifier, SIGUSR2) // trapped by a daemon run with KVSCRUBD_TEST_FAULTS=1: the loop hangs
        _ = n.receive(timeout: 0.5)
        let after = n.receive(timeout: 1.5).filter { $0.contains("WATCHDOG=1") }
        #expect(after.isEmpty, "a hung loop must stop feeding the watchdog")
    }

    /// A cache directory gone for longer than the watchdog's timeout is a wait, not a hang:
    /// the watchdog is still fed and STATUS= says what the daemon waits for.
    @Test func watchdog_isFedWhileTheCacheDirectoryIsMissing() async throws {
        let root = TempDir()
        let n = try NotifySocket(path: root.file("notify"))
        let d = try startDaemon(root, env: ["NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "400000"])
        defer { if d.isRunning { kill(d.processIdentifier, SIGKILL); d.waitUntilExit() } }
        _ = n.receive(timeout: 15) { $0.contains("READY=1") }
        #expect(rmdir(root.file("cache")) == 0)
        let waiting = n.receive(timeout: 10) { $0.contains("STATUS=waiting for the cache directory") }
        #expect(waiting.contains { $0.contains("STATUS=waiting for the cache directory") })
        // Four watchdog timeouts (1.6 s) without the directory: fed all along.
        let during = n.receive(timeout: 1.6)
        let fed = during.filter { $0.contains("WATCHDOG=1") }
        #expect(fed.count >= 5, "WATCHDOG=1 every 200 ms while waiting, got \(fed.count) in 1.6 s")
        #expect(d.isRunning)
        try FileManager.default.createDirectory(atPath: root.file("cache"), withIntermediateDirectories: true)
        let back = n.receive(timeout: 10) { $0.contains("STATUS=") && !$0.contains("waiting") }
        #expect(back.contains { $0.contains("STATUS=") && !$0.contains("waiting") }, "\(back.suffix(3))")
        kill(d.processIdentifier, SIGTERM)
        await d.exited()
        #expect(d.terminationStatus == 0)
    }

    @Test func noNotifySocket_noNotifications_andNothingBreaks() async {
        // Outside systemd every call is a no-op.
        let n = SystemdNotifier()
        if ProcessInfo.processInfo.environment["NOTIFY_SOCKET"] == nil {
            #expect(!n.isActive)
            #expect(!n.send("READY=1"))
            #expect(n.watchdogInterval == nil)
        }
    }

    @Test func journalFields_areStructured_andNamedAsJournaldRequires() async {
        let f = JournalLogHandler.fields(level: .warning, message: "corrupt file removed",
                                         metadata: ["event": "corrupt-removed", "file": "ab.kv", "region": "payload",
                                                    "expected_crc": "0x00000001", "actual_crc": "0x00000002", "bytes": "123"],
                                         identifier: "kvscrubd", messageID: DaemonEvent.Kind.messageID(forEvent:))
            .map { String(decoding: $0, as: UTF8.self) }
        #expect(f.contains("PRIORITY=4"))
        #expect(f.contains("SYSLOG_IDENTIFIER=kvscrubd"))
        #expect(f.contains("MESSAGE_ID=\(DaemonEvent.Kind.corruptRemoved.messageID!)"))
        for field in ["KVSCRUB_FILE=ab.kv", "KVSCRUB_REGION=payload", "KVSCRUB_EXPECTED_CRC=0x00000001", "KVSCRUB_ACTUAL_CRC=0x00000002", "KVSCRUB_BYTES=123"] {
            #expect(f.contains(field), "\(field)")
        }
        for name in f.map({ String($0.prefix { $0 != "=" }) }) {
            #expect(name.allSatisfy { ($0 >= "A" && $0 <= "Z") || ($0 >= "0" && $0 <= "9") || $0 == "_" } && !name.hasPrefix("_"), "\(name)")
        }
        let ids = DaemonEvent.Kind.allCases.compactMap(\.messageID)
        #expect(ids.count >= 19 && Set(ids).count == ids.count)
        #expect(ids.allSatisfy { $0.count == 32 && $0.allSatisfy(\.isHexDigit) })
    }
}

enum KVScrubDaemonClient {
    static func ping(_ socket: String) throws -> Bool { try send(socket, "ping") }
    static func send(_ socket: String, _ cmd: String) throws -> Bool {
        let c = try RawClient(path: socket)
        c.send("{\"cmd\":\"\(cmd)\"}\n")
        return c.readLine().contains("\"ok\":true")
    }
}
