import Foundation
import ServiceLifecycle

/// A blocking loop (the maintenance loop, the scrub) on a thread of its own,
/// run as a `Service`: `run` returns when the loop does, and the group's
/// graceful shutdown asks the loop to end through `stop`. The thread is
/// waited for through a continuation the thread resumes, so no task blocks
/// a cooperative thread while it runs.
struct ThreadService: Service, CustomStringConvertible {
    /// The thread's name, as ps -L shows it (at most 15 bytes are kept).
    let description: String
    let body: @Sendable () -> Void
    let stop: @Sendable () -> Void

    func run() async throws {
        let (name, body) = (description, body)
        await withGracefulShutdownHandler {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                let thread = Thread {
                    Daemon.nameThread(name)
                    body()
                    done.resume()
                }
                thread.start()
            }
        } onGracefulShutdown: { [stop] in
            stop()
        }
    }
}
