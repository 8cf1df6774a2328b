import CLinux
import Foundation
import Logging
import NIOCore

/// One client of the control socket: requests in, replies out, one at a time.
///
/// Flow control is the point. The channel does not read on its own
/// (`autoRead` off): it reads when no request is waiting, either while a
/// reply is being written or once it has been. Lines come out of NIO's `ByteToMessageHandler`
/// with `LineDecoder`; each is answered (on the event loop from memory, or
/// off it for the commands that block), its reply written, and only when the
/// write has completed does the next line get its turn. A client that sends
/// and never reads therefore fills its own socket buffers and then simply
/// stops being read: the daemon holds one reply for it, not every reply it
/// asked for. A reply that cannot be written for `writeStall` (the client
/// stopped reading) closes the connection, so a stalled client does not
/// keep its slot either; one that goes quiet is closed after the idle
/// timeout, unless it is waiting for a long answer. Replies go out in
/// request order because there is only ever one in flight.
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
    private var answering = false
    private var closing = false
    private var admitted: (uid: UInt32?, privileged: Bool)?
    private var peer: AccessPolicy.Peer?
    /// Replies written so far, and the last one whose write completed; the stall timer of the one in flight.
    private var writes = 0
    private var writesDone = 0
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
        switch limits.admit(uid: peer?.uid, privileged: isPrivileged) {
        case .refused(let why):
            closing = true
            write(context: context, .failure(why))
        case .admitted:
            admitted = (peer?.uid, isPrivileged)
            context.read()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let a = admitted { limits.leave(uid: a.uid, privileged: a.privileged); admitted = nil }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard admitted != nil, !closing else { return }
        waiting.append(.line(unwrapInboundIn(data)))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        next(context: context)
    }

    /// Answers the next waiting line, or asks for more bytes when there is none.
    private func next(context: ChannelHandlerContext) {
        guard !answering, admitted != nil else { return }
        guard let item = waiting.popFirst() else {
            if !closing { context.read() }
            return
        }
        switch item {
        case .tooLong:
            closing = true
            waiting.removeAll()
            write(context: context, .failure("request longer than \(ControlServer.maxRequestBytes) bytes"))
        case .line(let line):
            let request: ControlRequest
            if let last = lastRequest, last.line == line {
                request = last.request
            } else {
                let bytes = Data(line.readableBytesView)
                if bytes.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") }) { return next(context: context) }
                guard let decoded = try? decoder.decode(ControlRequest.self, from: bytes) else {
                    write(context: context, .failure("malformed request: expected one JSON object per line, like {\"cmd\":\"status\"}"))
                    return
                }
                request = decoded
                lastRequest = line.readableBytes <= 256 ? (line, decoded) : nil
            }
            switch handler(request, peer) {
            case .now(let response):
                write(context: context, response)
            case .encoded(let line):
                write(context: context, line: line)
            case .later(let work):
                answering = true
                let promise = context.eventLoop.makePromise(of: ControlResponse.self)
                promise.completeWithTask { await work() }
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                promise.futureResult.whenSuccess { response in
                    let (me, ctx) = bound.value
                    me.answering = false
                    me.write(context: ctx, response)
                }
            }
        }
    }

    /// Writes one reply; the next line is taken once it is written (or the connection closes, when closing).
    private func write(context: ChannelHandlerContext, _ response: ControlResponse) {
        write(context: context, line: response.line)
    }

    private func write(context: ChannelHandlerContext, line data: Data) {
        answering = true
        var out = context.channel.allocator.buffer(capacity: data.count)
        out.writeBytes(data)
        writes += 1
        let this = writes
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let written = context.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenComplete { result in
            let (me, ctx) = bound.value
            me.writesDone = this
            me.stall?.cancel()
            me.stall = nil
            me.answering = false
            if case .failure = result { ctx.close(promise: nil); return }
            if me.closing { ctx.close(promise: nil); return }
            me.next(context: ctx)
        }
        context.writeAndFlush(wrapOutboundOut(out), promise: written)
        // Ask for the next bytes now, while the reply goes out, when nothing is waiting: the
        // channel then stays registered for reads instead of NIO dropping and re-adding its
        // epoll interest around every request (two epoll_ctl calls each). Still bounded: lines
        // read meanwhile wait in `waiting`, and nothing more is read while any are waiting or a
        // reply is unwritten (a client that does not read stops being read).
        if waiting.isEmpty && !closing { context.read() }
        // A client that stops reading stops the write; past the stall limit, it loses the connection.
        // Most writes are done by now (the socket took them): the timer is only for those that are not.
        if writesDone < this && stall == nil {
            stall = context.eventLoop.scheduleTask(in: Self.writeStall) { bound.value.1.close(promise: nil) }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            // Idle means the client has gone quiet, not that a long `scrub now` is still being answered.
            if !answering && waiting.isEmpty { context.close(promise: nil) }
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
