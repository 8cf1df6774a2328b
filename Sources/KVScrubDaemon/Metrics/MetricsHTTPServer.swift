import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// The optional loopback HTTP listener for a Prometheus scraper: `GET
/// /metrics` and nothing else. Off by default; it only serves what
/// `kvscrubd metrics` prints over the socket, so it carries no
/// authentication and accepts only loopback addresses (DaemonConfig checks).
final class MetricsHTTPServer: Sendable {
    typealias Render = @Sendable () -> String
    let channel: any Channel

    private init(channel: any Channel) { self.channel = channel }

    static func start(listen: String, on loop: any EventLoopGroup, logger: Logger, render: @escaping Render) async throws -> MetricsHTTPServer {
        guard let (host, port) = DaemonConfig.splitHostPort(listen) else {
            throw ControlServerError(path: listen, detail: "not an address:port")
        }
        let channel = try await ServerBootstrap(group: loop)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    try ch.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .seconds(10)))
                    try ch.pipeline.syncOperations.addHandler(MetricsHTTPHandler(render: render))
                }
            }
            .bind(host: host == "localhost" ? "127.0.0.1" : host, port: port)
            .get()
        return MetricsHTTPServer(channel: channel)
    }

    func stop() async { try? await channel.close() }
}

final class MetricsHTTPHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let render: MetricsHTTPServer.Render
    init(render: @escaping MetricsHTTPServer.Render) { self.render = render }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        if head.method != .GET && head.method != .HEAD {
            respond(context, head, .methodNotAllowed, "text/plain; charset=utf-8", "only GET /metrics\n")
        } else if path == "/metrics" {
            // Rendered off the event loop, which the control socket shares (the socket's `metrics`
            // runs off it too); the reply is written back on the loop. NIO's HTTP pipeline handler
            // holds a pipelined next request until this reply has ended.
            let loop = context.eventLoop, bound = NIOLoopBound(context, eventLoop: loop), render = self.render
            DispatchQueue.global().async {
                let body = render()
                loop.execute { self.respond(bound.value, head, .ok, "text/plain; version=0.0.4; charset=utf-8", body) }
            }
        } else {
            respond(context, head, .notFound, "text/plain; charset=utf-8", "kvscrubd serves /metrics only\n")
        }
    }

    private func respond(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ status: HTTPResponseStatus, _ type: String, _ body: String) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            var buf = context.channel.allocator.buffer(capacity: body.utf8.count)
            buf.writeString(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buf))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let ch = context.channel
            done.whenComplete { _ in ch.close(promise: nil) }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent { context.close(promise: nil) } else { context.fireUserInboundEventTriggered(event) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}
