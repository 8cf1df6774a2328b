import CSystemd
import Foundation

/// Tells systemd what the daemon is doing (`sd_notify(3)`): READY=1 once the
/// index is built and the socket listens, a one-line STATUS= that `systemctl
/// status` shows, RELOADING=1/READY=1 around a reload, STOPPING=1, and the
/// watchdog keep-alive. Every call is a no-op when NOTIFY_SOCKET is unset
/// (not started by systemd), which libsystemd decides for us.
public struct SystemdNotifier: Sendable {
    public init() {}

    /// True when a service manager listens (NOTIFY_SOCKET is set).
    public var isActive: Bool { ProcessInfo.processInfo.environment["NOTIFY_SOCKET"] != nil }

    @discardableResult
    public func send(_ assignments: String) -> Bool { kvs_sd_notify(assignments) > 0 }

    public func ready(status: String) { send("READY=1\nSTATUS=\(status)") }

    public func status(_ text: String) { send("STATUS=\(text)") }

    /// RELOADING=1 needs MONOTONIC_USEC (systemd >= 253 checks it for Type=notify-reload; harmless before).
    public func reloading() {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let usec = UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
        send("RELOADING=1\nMONOTONIC_USEC=\(usec)")
    }

    public func stopping() { send("STOPPING=1") }

    public func watchdog() { send("WATCHDOG=1") }

    /// How often to send WATCHDOG=1: half of WATCHDOG_USEC, when it applies to this process.
    public var watchdogInterval: Duration? {
        var usec: UInt64 = 0
        guard kvs_sd_watchdog_enabled(&usec) > 0, usec > 0 else { return nil }
        return .microseconds(Int64(usec / 2))
    }
}

/// A listening socket handed over by systemd (`sd_listen_fds(3)`), if any.
public enum SocketActivation {
    /// The first passed file descriptor when it is a listening Unix stream socket.
    public static func listeningUnixSocket() -> Int32? {
        let n = kvs_sd_listen_fds()
        guard n >= 1 else { return nil }
        let fd = SD_LISTEN_FDS_START
        return kvs_sd_is_socket_unix(fd) > 0 ? fd : nil
    }
}
