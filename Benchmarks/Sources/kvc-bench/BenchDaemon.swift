import Foundation
import KVCFormat
#if canImport(Glibc)
import Glibc
#endif

/// A `kvscrubd run` for the benchmarks, asked over its socket through the
/// `kvscrubd status --json` command a user would run... except in the tight
/// loops, where a raw socket exchange keeps the measurement from timing process start-ups.
final class BenchDaemon {
    let process = Process()
    let socket: String
    let cache: String

    init(kvscrubd: String, base: String, cache: String? = nil, extra: [String]) throws {
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        socket = base + "/ctl.sock"
        self.cache = cache ?? base + "/cache"
        try FileManager.default.createDirectory(atPath: self.cache, withIntermediateDirectories: true)
        process.executableURL = URL(fileURLWithPath: kvscrubd)
        process.arguments = ["run", "--cache-dir", self.cache, "--state-dir", base + "/state", "--socket", socket, "--log-level", "warning"] + extra
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if (try? ask("{\"cmd\":\"ping\"}")) != nil { return }
            usleep(2000)
        }
        throw ValidationErrorText("kvscrubd did not start")
    }

    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGTERM); process.waitUntilExit() }
    }

    func status() throws -> [String: Any] {
        guard let s = try JSONSerialization.jsonObject(with: Data(try ask("{\"cmd\":\"status\"}").utf8)) as? [String: Any],
              let st = s["status"] as? [String: Any] else { throw ValidationErrorText("bad status reply") }
        return st
    }

    func files() throws -> Int { try status()["files"] as? Int ?? -1 }

    /// Bytes the scrub has read so far (its counter in `status`).
    func scrubBytes() throws -> Double { Double((try status()["counters"] as? [String: Any])?["scrub_bytes"] as? Int ?? 0) }

    func passFinished() throws -> Bool { ((try status()["scrub"] as? [String: Any])?["last_pass"]) != nil }

    func lastPass() throws -> (bytes: Double, startedAt: Double, endedAt: Double) {
        guard let p = (try status()["scrub"] as? [String: Any])?["last_pass"] as? [String: Any] else { throw ValidationErrorText("no pass") }
        return ((p["bytes"] as? NSNumber)?.doubleValue ?? 0, (p["started_at"] as? NSNumber)?.doubleValue ?? 0, (p["ended_at"] as? NSNumber)?.doubleValue ?? 0)
    }

    /// Resident memory, MiB (/proc/PID/status VmRSS).
    func rssMiB() -> Double {
        let s = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
        let line = s.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return (Double(line.split(separator: " ").dropFirst().first ?? "") ?? 0) / 1024
    }

    /// User plus system CPU seconds the daemon has used (/proc/PID/stat).
    func cpuSeconds() -> Double { Self.cpuSeconds(pid: process.processIdentifier) }

    /// User plus system CPU a process has used so far, from /proc.
    static func cpuSeconds(pid: Int32) -> Double {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return 0 }
        let fields = s[s.index(after: close)...].split(separator: " ")
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return ((Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)) / ticks
    }

    func ask(_ line: String) throws -> String {
        let fd = Self.connectUnix(socket)
        guard fd >= 0 else { throw ValidationErrorText("connect failed") }
        defer { Glibc.close(fd) }
        let req = line + "\n"
        _ = req.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while !out.contains(10) {
            let n = read(fd, &buf, buf.count)
            guard n > 0 else { break }
            out += buf[0..<n]
        }
        return String(decoding: out.prefix { $0 != 10 }, as: UTF8.self)
    }
}

extension BenchDaemon {
    /// A connected Unix stream socket, or -1.
    static func connectUnix(_ path: String) -> Int32 {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        if rc != 0 { Glibc.close(fd); return -1 }
        return fd
    }
}

struct ValidationErrorText: Error, CustomStringConvertible {
    let description: String
    init(_ s: String) { description = s }
}
