import Foundation
import KVScrubControl
import Logging
import NIOCore
import NIOPosix
import NIOConcurrencyHelpers
#if canImport(Glibc)
import Glibc
#endif

/// The Unix control socket, on SwiftNIO: the event loop never blocks. Each
/// connection is a `ControlConnection` (framing by NIO's
/// `ByteToMessageHandler`, requests answered in order, nothing read while
/// the channel is unwritable: a client that never reads costs a reply or two).
/// Connections are limited per peer (`ConnectionLimits`): a total, a share
/// kept for privileged peers, and a cap per unprivileged uid. A request
/// answered from memory is answered on the loop (no task hop: that alone
/// doubled a `status` round trip); one that blocks runs off it. The peer's
/// credentials (`SO_PEERCRED`, through CLinux's `kvs_peer_credentials`) are
/// read once per connection and handed to the handler with every request,
/// for `AccessPolicy`.
final class ControlServer: Sendable {
    typealias Handler = @Sendable (ControlRequest, AccessPolicy.Peer?) -> ControlReply

    static let maxRequestBytes = 64 * 1024
    static let idleTimeout = TimeAmount.seconds(10)
    /// Reply bytes a connection may have waiting for the client before it stops answering and
    /// reading (NIO's high-water mark), and the level under which it starts again.
    static let replyBacklog = ChannelOptions.Types.WriteBufferWaterMark(low: 32 * 1024, high: 64 * 1024)

    /// How long a stopping server waits for its connections to answer what they were asked.
    static let drainTime = Duration.seconds(10)

    let channel: any Channel
    let path: String
    /// A socket systemd passed us is systemd's to remove, not ours.
    let ownsPath: Bool
    /// The connections open now, by channel: told to drain when the server stops.
    let connections: Connections

    /// The open connections.
    final class Connections: Sendable {
        private let open = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])

        func add(_ channel: any Channel) {
            open.withLockedValue { $0[ObjectIdentifier(channel)] = channel }
            channel.closeFuture.whenComplete { [self] _ in _ = open.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(channel)) } }
        }

        var all: [any Channel] { open.withLockedValue { Array($0.values) } }
    }

    private init(channel: any Channel, path: String, ownsPath: Bool, connections: Connections) {
        self.channel = channel
        self.path = path
        self.ownsPath = ownsPath
        self.connections = connections
    }

    /// Every accepted connection a `ControlConnection`, reading only when it asks to (flow control).
    private static func bootstrap(_ loop: any EventLoopGroup, limits: ConnectionLimits, connections: Connections,
                                  privileged: @escaping @Sendable (AccessPolicy.Peer) -> Bool, handler: @escaping Handler) -> ServerBootstrap {
        ServerBootstrap(group: loop)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.writeBufferWaterMark, value: replyBacklog)
            .childChannelInitializer { ch in
                connections.add(ch)
                return ch.eventLoop.makeCompletedFuture {
                    try ControlConnection.install(on: ch, handler: handler, limits: limits, privileged: privileged)
                }
            }
    }

    /// Serves on a listening socket systemd passed (socket activation); its
    /// path, mode and group are the socket unit's business.
    /// `privileged`: whether a peer may use the connections kept back (root, the daemon's user, the admin group);
    /// it runs on the event loop, so it must not block.
    static func adopt(descriptor: Int32, path: String, on loop: any EventLoopGroup, limits: ConnectionLimits = ConnectionLimits(),
                             privileged: @escaping @Sendable (AccessPolicy.Peer) -> Bool,
                             handler: @escaping Handler) async throws -> ControlServer {
        let connections = Connections()
        let channel = try await bootstrap(loop, limits: limits, connections: connections, privileged: privileged, handler: handler)
            .withBoundSocket(descriptor)
            .get()
        return ControlServer(channel: channel, path: path, ownsPath: false, connections: connections)
    }

    /// Binds `path` (replacing a stale socket left by a crash, never any other
    /// kind of file), applies the mode and group, and starts serving.
    static func start(path: String, mode: UInt32, group: String?, on loop: any EventLoopGroup, limits: ConnectionLimits = ConnectionLimits(),
                             privileged: @escaping @Sendable (AccessPolicy.Peer) -> Bool,
                             handler: @escaping Handler) async throws -> ControlServer {
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var st = stat()
        if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) != S_IFSOCK {
            throw ControlServerError(path: path, detail: "exists and is not a socket; refusing to replace it")
        }
        let connections = Connections()
        let channel = try await bootstrap(loop, limits: limits, connections: connections, privileged: privileged, handler: handler)
            .serverChannelOption(.backlog, value: 128)
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true)
            .get()
        guard chmod(path, mode_t(mode)) == 0 else {
            try? await channel.close()
            throw ControlServerError(path: path, detail: "cannot set mode \(String(mode, radix: 8)): \(String(cString: strerror(errno)))")
        }
        if let group {
            guard let gr = getgrnam(group) else {
                try? await channel.close()
                throw ControlServerError(path: path, detail: "no group named \(group)")
            }
            guard chown(path, uid_t.max, gr.pointee.gr_gid) == 0 else {
                try? await channel.close()
                throw ControlServerError(path: path, detail: "cannot give the socket to group \(group): \(String(cString: strerror(errno)))")
            }
        }
        return ControlServer(channel: channel, path: path, ownsPath: true, connections: connections)
    }

    /// Stops listening, removes the socket file (unless systemd owns it), and drains the connections:
    /// each answers what it was asked (the reply being worked out included), reads nothing more and
    /// closes; what is still open after `drainTime` is closed.
    func stop(drainFor limit: Duration = ControlServer.drainTime) async {
        try? await channel.close()
        if ownsPath { unlink(path) }
        let open = connections.all
        guard !open.isEmpty else { return }
        for ch in open { ch.pipeline.fireUserInboundEventTriggered(ControlConnection.Drain()) }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { for ch in open { try? await ch.closeFuture.get() } }
            group.addTask {
                try? await Task.sleep(for: limit)
                for ch in open { ch.close(promise: nil) } // past the limit (or every one closed already: harmless)
            }
            await group.next()
            group.cancelAll()
        }
    }
}

struct ControlServerError: Error, CustomStringConvertible {
    let path: String
    let detail: String
    var description: String { "control socket \(path): \(detail)" }
}

/// A handler's answer: ready now, or work to run off the event loop.
@_spi(Fuzzing) public enum ControlReply: Sendable {
    case now(ControlResponse)
    /// A reply already encoded as one line (`ControlResponse.line`), as a cache keeps it.
    case encoded(Data)
    case later(@Sendable () async -> ControlResponse)
}
