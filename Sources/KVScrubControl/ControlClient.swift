import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The command-line side of the control socket: connect, send one request
/// line, read one reply line. Blocking and small on purpose: the CLI does
/// one exchange and exits.
public struct ControlClient: Sendable {
    public let path: String
    public var timeout: Double = 10

    public init(path: String) { self.path = path }

    public func send(_ request: ControlRequest) throws(ControlClientError) -> ControlResponse {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlClientError(path: path, detail: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw ControlClientError(path: path, detail: "socket path too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            let hint = e == ENOENT || e == ECONNREFUSED ? " (is kvscrubd running? see --socket)" : e == EACCES ? " (permission denied: are you in the socket's group?)" : ""
            throw ControlClientError(path: path, detail: "cannot connect: \(String(cString: strerror(e)))\(hint)")
        }
        let enc = JSONEncoder()
        var line = (try? enc.encode(request)) ?? Data()
        line.append(UInt8(ascii: "\n"))
        let sent = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard sent == line.count else { throw ControlClientError(path: path, detail: "cannot send the request") }
        var reply = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while !reply.contains(UInt8(ascii: "\n")) {
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw ControlClientError(path: path, detail: n == 0 ? "the daemon closed the connection" : "no reply: \(String(cString: strerror(errno)))")
            }
            reply.append(contentsOf: buf[0..<n])
        }
        let dec = JSONDecoder()
        dec.keyDecodingStrategy = .convertFromSnakeCase
        do {
            return try dec.decode(ControlResponse.self, from: reply.prefix(while: { $0 != UInt8(ascii: "\n") }))
        } catch {
            throw ControlClientError(path: path, detail: "unreadable reply: \(error)")
        }
    }
}

public struct ControlClientError: Error, CustomStringConvertible {
    public let path: String
    public let detail: String
    public var description: String { "\(path): \(detail)" }
}
