import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A server that cannot bind stops the whole daemon with the reason, before
/// it ever says it is ready, and takes nothing of the cache with it: the
/// servers bind in their services, and a failed one fails the group.
@Suite struct ListenerFailureTests {
    @Test func aMetricsPortInUse_stopsTheDaemon_withTheReason_andRemovesItsSocket() async throws {
        let root = TempDir()
        // A port held by someone else.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 1)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        try FileManager.default.createDirectory(atPath: root.file("cache"), withIntermediateDirectories: true)
        let kept = try Damage.store(root.file("cache"), version: 2, seed: 4242)

        let d = try await DaemonProcess(root: root, extra: ["--metrics-listen", "127.0.0.1:\(port)"], waitForSocket: false)
        try await waitUntil("the daemon to give up", timeout: 20, daemon: d) { !d.process.isRunning }
        #expect(d.process.terminationStatus == 2)
        #expect(d.log.contains("Address already in use"), "\(d.log.suffix(2000))")
        #expect(!d.log.contains("event=ready"), "said ready with a server that never listened")
        #expect(!FileManager.default.fileExists(atPath: d.socket), "the control socket was left behind")
        #expect(FileManager.default.fileExists(atPath: kept))
    }
}
