import Foundation
import Logging
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// The Unix control socket, on SwiftNIO: every connection is served on the
/// event loop without ever blocking it (requests are answered from the
/// in-memory state), so a client that connects and stalls only holds its own
/// connection, which the idle timeout then closes. A line longer than the
/// limit gets an error reply and the connection is closed; a malformed one
/// gets an error reply and the connection goes on.
public final class ControlServer: Sendable {
    public typealias Handler = @Sendable (ControlRequest) -> ControlResponse

    public static let maxRequestBytes = 64 * 1024
    public static let idleTimeout = TimeAmount.seconds(10)

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
        let channel = try await ServerBootstrap(group: loop)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: idleTimeout))
                    try ch.pipeline.syncOperations.addHandler(LineHandler(handler: handler, logger: logger))
                }
            }
            .withBoundSocket(descriptor: descriptor)
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
        let channel = try await ServerBootstrap(group: loop)
            .serverChannelOption(.backlog, value: 128)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: idleTimeout))
                    try ch.pipeline.syncOperations.addHandler(LineHandler(handler: handler, logger: logger))
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

/// Splits the byte stream into lines and answers each one.
final class LineHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: NIO calls a handler only on its channel's event loop, one
    // call at a time, so `pending` is never touched concurrently.
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let handler: ControlServer.Handler
    let logger: Logger
    private var pending = ByteBuffer()

    init(handler: @escaping ControlServer.Handler, logger: Logger) {
        self.handler = handler
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        pending.writeBuffer(&incoming)
        while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - pending.readerIndex
            let line = pending.readSlice(length: length)!
            pending.moveReaderIndex(forwardBy: 1)
            reply(context: context, to: line)
        }
        if pending.readableBytes > ControlServer.maxRequestBytes {
            send(context: context, .failure("request longer than \(ControlServer.maxRequestBytes) bytes"))
            context.close(promise: nil)
            return
        }
        pending.discardReadBytes()
    }

    private func reply(context: ChannelHandlerContext, to line: ByteBuffer) {
        let bytes = Data(line.readableBytesView)
        if bytes.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") }) { return }
        guard let request = try? JSONDecoder().decode(ControlRequest.self, from: bytes) else {
            send(context: context, .failure("malformed request: expected one JSON object per line, like {\"cmd\":\"status\"}"))
            return
        }
        send(context: context, handler(request))
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
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
