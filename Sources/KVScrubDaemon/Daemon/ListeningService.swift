import ServiceLifecycle
import NIOConcurrencyHelpers

/// A server (the control socket, the metrics listener) as a service of the
/// daemon's group. It binds in `run`, so a server that cannot bind fails the
/// group, which stops every part; it says it is listening through `bound`
/// (readiness waits for every server); it serves until the group shuts down
/// gracefully or is cancelled; then it closes its listener and connections.
struct ListeningService: Service, CustomStringConvertible {
    let description: String
    /// Binds and starts serving; returns how to stop.
    let start: @Sendable () async throws -> @Sendable () async -> Void
    let bound: StartLatch

    func run() async throws {
        let stop = try await start()
        bound.arrive()
        try? await gracefulShutdown() // returns on a graceful shutdown, throws on cancellation: either way, stop
        await stop()
    }
}

/// Counts parts that have started (the servers, once bound) down to zero; a
/// waiter is let through then, or when its task is cancelled.
final class StartLatch: Sendable {
    private let state: NIOLockedValueBox<(left: Int, waiters: [CheckedContinuation<Void, Never>])>

    init(count: Int) { state = NIOLockedValueBox((count, [])) }

    func arrive() {
        let released = state.withLockedValue { s -> [CheckedContinuation<Void, Never>] in
            s.left -= 1
            guard s.left <= 0 else { return [] }
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in released { w.resume() }
    }

    /// Returns once every part has arrived, or at once when the task is (or gets) cancelled.
    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = state.withLockedValue { s -> Bool in
                    if s.left <= 0 || Task.isCancelled { return true }
                    s.waiters.append(c)
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            let released = state.withLockedValue { s -> [CheckedContinuation<Void, Never>] in
                defer { s.waiters = [] }
                return s.waiters
            }
            for w in released { w.resume() }
        }
    }
}
