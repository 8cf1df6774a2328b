import Logging
import NIOCore

extension ListeningService {
    /// The optional HTTP `/metrics` listener as a service, rendering with `render` off the event loop.
    static func metricsListener(_ listen: String, on loop: any EventLoopGroup, logger: Logger, bound: StartLatch,
                                render: @escaping @Sendable () -> String) -> ListeningService {
        ListeningService(description: "metrics listener", start: {
            let server = try await MetricsHTTPServer.start(listen: listen, on: loop, logger: logger, render: render)
            logger.info("serving /metrics over HTTP", metadata: ["listen": "\(listen)"])
            return { await server.stop() }
        }, bound: bound)
    }
}
