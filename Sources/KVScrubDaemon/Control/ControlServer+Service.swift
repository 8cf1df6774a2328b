import KVScrubSystemd
import Logging
import NIOCore

extension ListeningService {
    /// The control socket as a service: the one systemd passed (socket activation), or one bound at
    /// `socket_path` with its mode and group, served by `handler` on `loop`.
    static func controlSocket(_ config: DaemonConfig, on loop: any EventLoopGroup, handler control: ControlHandler,
                              logger: Logger, bound: StartLatch) -> ListeningService {
        let privileged: @Sendable (AccessPolicy.Peer) -> Bool = { peer in control.isPrivileged(peer) }
        let handler: ControlServer.Handler = { request, peer in control.handle(request, peer: peer) }
        return ListeningService(description: "control socket", start: {
            let server: ControlServer
            if let fd = SocketActivation.listeningUnixSocket() {
                server = try await ControlServer.adopt(descriptor: fd, path: config.socketPath, on: loop, privileged: privileged, handler: handler)
                logger.info("serving the socket systemd passed", metadata: ["fd": "\(fd)"])
            } else {
                server = try await ControlServer.start(path: config.socketPath, mode: config.socketMode, group: config.socketGroup,
                                                       on: loop, privileged: privileged, handler: handler)
            }
            return { await server.stop() }
        }, bound: bound)
    }
}
