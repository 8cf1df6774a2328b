import CLinux
import Foundation
import KVScrubControl
import Logging
import NIOCore

/// One client of the control socket: requests in, replies out, in order.
///
/// Flow control is the point. The channel does not read on its own
/// (`autoRead` off): it asks for bytes only when no request is waiting and
/// the channel is writable. Lines come out of NIO's `ByteToMessageHandler`
/// with `LineDecoder`; each is answered in turn (on the event loop from
/// memory, or off it for the commands that block, and then nothing else is
/// answered until that reply is out). Backpressure is NIO's writability: a
/// reply is handed to the channel, and while what the socket has not yet
/// taken stays under the high-water mark (`ControlServer.replyBacklog`,
/// 64 KiB) the next line is answered at once: no promise and no callback per
/// reply (they were a sixth of the CPU a cached `status` cost). Once
/// a reply leaves the channel unwritable, nothing more is answered or read
/// until `channelWritabilityChanged` says the client has caught up. A client
/// that sends and never reads therefore fills its own socket buffers and then
/// simply stops being read: the daemon holds at most the reply in flight and
/// what is under the high-water mark, never every reply it asked for. A
/// channel that stays unwritable for `writeStall` (the client stopped
/// reading) is closed, so a stalled client does not keep its slot either; one
/// that goes quiet is closed after the idle timeout, unless it is waiting for
/// a long answer. Replies go out in request order because they are written in
/// request order, one line at a time.
final class ControlConnection: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    static let writeStall = TimeAmount.seconds(30)

    private enum Item {
        case line(ByteBuffer)
        /// A line longer than the limit: answered with an error, then the connection closes.
        case tooLong
    }

    private let handler: ControlServer.Handler
    private let limits: ConnectionLimits
    private let privileged: @Sendable (AccessPolicy.Peer) -> Bool
    private var waiting = CircularBuffer<Item>()
    /// A reply is being worked out off the loop.
    private var answering = false
    /// The last reply left the channel unwritable: the client is not reading fast enough.
    private var writeBlocked = false
    private var closing = false
    /// The server is stopping (`Drain`): what was asked is answered, nothing more is read, then the connection closes.
    private var draining = false
    private var admitted: (uid: UInt32?, pid: Int32?, privileged: Bool)?
    private var peer: AccessPolicy.Peer?
    /// Closes the connection when the channel stays unwritable for `writeStall`.
    private var stall: Scheduled<Void>?
    /// The last line decoded and what it decoded to: monitoring sends the same line again
    /// and again, and decoding JSON is most of what a cached `status` costs.
    private var lastRequest: (line: ByteBuffer, request: ControlRequest)?
    private let decoder = JSONDecoder()

    init(handler: @escaping ControlServer.Handler, limits: ConnectionLimits, privileged: @escaping @Sendable (AccessPolicy.Peer) -> Bool) {
        self.handler = handler
        self.limits = limits
        self.privileged = privileged
    }

    /// The pipeline of one accepted connection.
    static func install(on channel: any Channel, handler: @escaping ControlServer.Handler, limits: ConnectionLimits,
                        privileged: @escaping @Sendable (AccessPolicy.Peer) -> Bool) throws {
        let ops = channel.pipeline.syncOperations
        try ops.addHandler(IdleStateHandler(readTimeout: ControlServer.idleTimeout))
        try ops.addHandler(ByteToMessageHandler(LineDecoder(maxLength: ControlServer.maxRequestBytes)))
        try ops.addHandler(ControlConnection(handler: handler, limits: limits, privileged: privileged))
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        guard let provider = context.channel as? any SocketOptionProvider else { return admit(context: context) }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        // Read on the channel's own loop: the future is already complete, and the callback runs on this loop.
        let credentials: EventLoopFuture<kvs_peer_credentials> =
            provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        credentials.whenComplete { result in
                let (me, ctx) = bound.value
                if case .success(let c) = result { me.peer = AccessPolicy.Peer(pid: c.pid, uid: c.uid, gid: c.gid) }
                me.admit(context: ctx)
            }
    }

    /// Takes a connection slot for this peer and starts reading, or says why not and closes.
    private func admit(context: ChannelHandlerContext) {
        let isPrivileged = peer.map(privileged) ?? false
        switch limits.admit(uid: peer?.uid, pid: peer?.pid, privileged: isPrivileged) {
        case .refused(let why):
            closing = true
            send(context: context, line: ControlResponse.failure(why).line)
        case .admitted:
            admitted = (peer?.uid, peer?.pid, isPrivileged)
            context.read()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let a = admitted { limits.leave(uid: a.uid, pid: a.pid, privileged: a.privileged); admitted = nil }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard admitted != nil, !closing else { return }
        waiting.append(.line(unwrapInboundIn(data)))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        next(context: context)
    }

    /// Answers waiting lines until none is left (then asks for more bytes), one blocks
    /// (answered off the loop), or the channel stops being writable (the client is not reading).
    /// A loop, not recursion: a read can deliver thousands of short lines.
    private func next(context: ChannelHandlerContext) {
        while !answering, !writeBlocked, admitted != nil {
            guard let item = waiting.popFirst() else {
                if draining { return finish(context: context) }
                // Nothing waiting: ask for the next bytes now, even while a reply is still going out, so
                // the channel stays registered for reads instead of NIO dropping and re-adding its epoll
                // interest around every request (two epoll_ctl calls each).
                if !closing { context.read() }
                return
            }
            switch item {
            case .tooLong:
                closing = true
                waiting.removeAll()
                send(context: context, line: ControlResponse.failure("request longer than \(ControlServer.maxRequestBytes) bytes").line)
            case .line(let line):
                let request: ControlRequest
                if let last = lastRequest, last.line == line {
                    request = last.request
                } else {
                    let bytes = Data(line.readableBytesView)
                    if bytes.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") }) { continue }
                    guard let decoded = try? decoder.decode(ControlRequest.self, from: bytes) else {
                        send(context: context, line: ControlResponse.failure("malformed request: expected one JSON object per line, like {\"cmd\":\"status\"}").line)
                        continue
                    }
                    request = decoded
                    lastRequest = line.readableBytes <= 256 ? (line, decoded) : nil
                }
                switch handler(request, peer) {
                case .now(let response):
                    send(context: context, line: response.line)
                case .encoded(let line):
                    send(context: context, line: line)
                case .later(let work):
                    answering = true
                    let promise = context.eventLoop.makePromise(of: ControlResponse.self)
                    promise.completeWithTask { await work() }
                    let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                    promise.futureResult.whenSuccess { response in
                        let (me, ctx) = bound.value
                        me.answering = false
                        me.send(context: ctx, line: response.line)
                        me.next(context: ctx)
                    }
                }
            }
        }
    }

    /// Writes one reply. While the channel stays writable (what NIO has not yet handed to the
    /// socket is under its high-water mark) the next line may be answered at once; once it is
    /// not, nothing more is answered or read until `channelWritabilityChanged` says it is again.
    /// The last reply before closing is followed by the close once it is written.
    private func send(context: ChannelHandlerContext, line data: Data) {
        var out = context.channel.allocator.buffer(capacity: data.count)
        out.writeBytes(data)
        if closing {
            writeBlocked = true  // nothing more is answered; the connection closes once this is out
            context.writeAndFlush(wrapOutboundOut(out)).whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
            return
        }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        if !context.channel.isWritable {
            writeBlocked = true
            // A client that stops reading stops the write; past the stall limit, it loses the connection.
            if stall == nil {
                stall = context.eventLoop.scheduleTask(in: Self.writeStall) { [channel = context.channel] in channel.close(promise: nil) }
            }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && writeBlocked && !closing {
            stall?.cancel()
            stall = nil
            writeBlocked = false
            next(context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    /// Sent by the server when it stops: answer the requests already read (the one being worked out
    /// included), read nothing more, and close once the replies are out.
    struct Drain: Sendable {}

    /// Closes once every reply written so far is out (an empty write completes after them).
    private func finish(context: ChannelHandlerContext) {
        guard !closing else { return }
        closing = true
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).whenComplete { [channel = context.channel] _ in
            channel.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is Drain {
            draining = true
            guard admitted != nil else { return context.close(promise: nil) }
            next(context: context)
        } else if event is IdleStateHandler.IdleStateEvent {
            // Idle means the client has gone quiet, not that a long `scrub now` is still being answered.
            if !answering && !writeBlocked && waiting.isEmpty { context.close(promise: nil) }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is LineDecoder.LineTooLong {
            // After the replies to the lines before it.
            waiting.append(.tooLong)
            next(context: context)
        } else {
            context.close(promise: nil)
        }
    }
}

/// NIO's framing for the control protocol: one request per line, at most `maxLength` bytes.
struct LineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer

    struct LineTooLong: Error {}

    let maxLength: Int

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes > maxLength { throw LineTooLong() }
            return .needMoreData
        }
        let line = buffer.readSlice(length: newline - buffer.readerIndex)!
        buffer.moveReaderIndex(forwardBy: 1)
        if line.readableBytes > maxLength { throw LineTooLong() }
        context.fireChannelRead(wrapInboundOut(line))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A last line without its newline is not a request.
        .needMoreData
    }
}
