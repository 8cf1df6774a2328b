import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The Unix control socket, on SwiftNIO: the event loop never blocks. A
/// request answered from the in-memory state is answered right there on the
/// loop (no task hop: that alone doubled a `status` round trip); one that
/// reads files or waits (`scrub now`, `evict-now`) runs as a task off the
/// loop. Replies go back in request order either way. None of the limits can wedge the daemon: a client that connects and
/// stalls holds only its own connection until the idle timeout closes it; a
/// line longer than the limit gets an error reply and the connection is
/// closed; a malformed one gets an error reply and the connection goes on;
/// past the connection cap a newcomer gets an error reply and is closed.
/// The peer's credentials (`SO_PEERCRED`) are read once per connection and
/// handed to the handler with every request, for `AccessPolicy`.
public final class ControlServer: Sendable {
    public typealias Handler = @Sendable (ControlRequest, AccessPolicy.Peer?) -> ControlReply

    public static let maxRequestBytes = 64 * 1024
    public static let idleTimeout = TimeAmount.seconds(10)
    public static let maxConnections = 256

    let channel: any Channel
    public let path: String
    /// A socket systemd passed us is systemd's to remove, not ours.
    let ownsPath: Bool

    private init(channel: any Channel, path: String, ownsPath: Bool) {
        self.channel = channel
        self.path = path
        self.ownsPath = ownsPath
    }

    /// Serves on a listening socket systemd passed (socket activation); its
    /// path, mode and group are the socket unit's business.
    public static func adopt(descriptor: Int32, path: String, on loop: any EventLoopGroup,
                             logger: Logger, handler: @escaping Handler) async throws -> ControlServer {
        let connections = ConnectionCount()
        let channel = try await ServerBootstrap(group: loop)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: idleTimeout))
                    try ch.pipeline.syncOperations.addHandler(LineHandler(handler: handler, connections: connections, logger: logger))
                }
            }
            .withBoundSocket(descriptor)
            .get()
        return ControlServer(channel: channel, path: path, ownsPath: false)
    }

    /// Binds `path` (replacing a stale socket left by a crash, never any other
    /// kind of file), applies the mode and group, and starts serving.
    public static func start(path: String, mode: UInt32, group: String?, on loop: any EventLoopGroup,
                             logger: Logger, handler: @escaping Handler) async throws -> ControlServer {
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var st = stat()
        if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) != S_IFSOCK {
            throw ControlServerError(path: path, detail: "exists and is not a socket; refusing to replace it")
        }
        let connections = ConnectionCount()
        let channel = try await ServerBootstrap(group: loop)
            .serverChannelOption(.backlog, value: 128)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: idleTimeout))
                    try ch.pipeline.syncOperations.addHandler(LineHandler(handler: handler, connections: connections, logger: logger))
                }
            }
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
        return ControlServer(channel: channel, path: path, ownsPath: true)
    }

    /// Stops listening and removes the socket file (unless systemd owns it).
    public func stop() async {
        try? await channel.close()
        if ownsPath { unlink(path) }
    }
}

public struct ControlServerError: Error, CustomStringConvertible {
    public let path: String
    public let detail: String
    public var description: String { "control socket \(path): \(detail)" }
}

/// A handler's answer: ready now, or work to run off the event loop.
public enum ControlReply: Sendable {
    case now(ControlResponse)
    case later(@Sendable () async -> ControlResponse)
}

/// `struct ucred` from <sys/socket.h>, which Glibc hides from Swift behind
/// _GNU_SOURCE: the same three fields, in the same order and sizes (pid_t,
/// uid_t, gid_t: 12 bytes), which is all getsockopt(SO_PEERCRED) writes.
struct PeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

/// How many connections are open, against `ControlServer.maxConnections`.
final class ConnectionCount: Sendable {
    private let n = Atomic<Int>(0)
    /// Counts a new connection; false when the cap is reached (and nothing is counted).
    func admit() -> Bool {
        if n.wrappingAdd(1, ordering: .relaxed).newValue > ControlServer.maxConnections {
            n.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }
    func leave() { n.wrappingSubtract(1, ordering: .relaxed) }
}

/// Splits the byte stream into lines and answers each one, in order.
final class LineHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: NIO calls a handler only on its channel's event loop, one
    // call at a time, and every closure below that touches `pending`, `tail`
    // or `peer` runs on that loop (hopped back with `eventLoop.execute`/futures),
    // so they are never touched concurrently.
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let handler: ControlServer.Handler
    let connections: ConnectionCount
    let logger: Logger
    private var pending = ByteBuffer()
    private var admitted = false
    private var peer: AccessPolicy.Peer?
    /// Completes when the last reply queued so far has been written: the next one waits for it.
    private var tail: EventLoopFuture<Void>?

    init(handler: @escaping ControlServer.Handler, connections: ConnectionCount, logger: Logger) {
        self.handler = handler
        self.connections = connections
        self.logger = logger
    }

    func channelActive(context: ChannelHandlerContext) {
        admitted = connections.admit()
        if !admitted {
            send(context: context, .failure("too many connections (\(ControlServer.maxConnections)); try again"))
            context.close(promise: nil)
            return
        }
        if let provider = context.channel as? any SocketOptionProvider {
            let cred: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
            cred.whenSuccess { [self] c in peer = AccessPolicy.Peer(pid: c.pid, uid: c.uid, gid: c.gid) }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if admitted { connections.leave(); admitted = false }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard admitted else { return }
        var incoming = unwrapInboundIn(data)
        pending.writeBuffer(&incoming)
        while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - pending.readerIndex
            let line = pending.readSlice(length: length)!
            pending.moveReaderIndex(forwardBy: 1)
            reply(context: context, to: line)
        }
        if pending.readableBytes > ControlServer.maxRequestBytes {
            queue(context: context, context.eventLoop.makeSucceededFuture(.failure("request longer than \(ControlServer.maxRequestBytes) bytes")))
            // The tail completes on this channel's event loop: the bound context is only touched there.
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            tail?.whenComplete { _ in bound.value.close(promise: nil) }
            pending.clear()
            return
        }
        pending.discardReadBytes()
    }

    private func reply(context: ChannelHandlerContext, to line: ByteBuffer) {
        let bytes = Data(line.readableBytesView)
        if bytes.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") }) { return }
        guard let request = try? JSONDecoder().decode(ControlRequest.self, from: bytes) else {
            queue(context: context, ready: .failure("malformed request: expected one JSON object per line, like {\"cmd\":\"status\"}"))
            return
        }
        switch handler(request, peer) {
        case .now(let response):
            queue(context: context, ready: response)
        case .later(let work):
            let promise = context.eventLoop.makePromise(of: ControlResponse.self)
            promise.completeWithTask { await work() }
            queue(context: context, promise.futureResult)
        }
    }

    /// Writes a ready answer now when nothing is pending on this connection, else after what is.
    private func queue(context: ChannelHandlerContext, ready response: ControlResponse) {
        if tail == nil { send(context: context, response) } else { queue(context: context, context.eventLoop.makeSucceededFuture(response)) }
    }

    /// Writes `response` once every earlier reply on this connection has been written.
    private func queue(context: ChannelHandlerContext, _ response: EventLoopFuture<ControlResponse>) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let previous = tail ?? context.eventLoop.makeSucceededVoidFuture()
        let next = previous.flatMap { response }.map { r in
            let (me, ctx) = loopBound.value
            me.send(context: ctx, r)
        }
        tail = next
        next.whenComplete { _ in
            let (me, _) = loopBound.value
            if me.tail === next { me.tail = nil }
        }
    }

    private func send(context: ChannelHandlerContext, _ response: ControlResponse) {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        enc.keyEncodingStrategy = .convertToSnakeCase
        var data = (try? enc.encode(response)) ?? Data(#"{"ok":false,"error":"cannot encode reply"}"#.utf8)
        data.append(UInt8(ascii: "\n"))
        var out = context.channel.allocator.buffer(capacity: data.count)
        out.writeBytes(data)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            // Idle means the client has gone quiet, not that a long `scrub now` is still being answered.
            if tail == nil { context.close(promise: nil) }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
