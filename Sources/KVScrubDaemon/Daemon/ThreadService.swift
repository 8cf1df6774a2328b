import CLinux
import Foundation
import Logging
import ServiceLifecycle

/// A blocking loop (the maintenance loop, the scrub) on a thread of its own,
/// run as a `Service`: `run` returns when the loop does, and the group's
/// graceful shutdown, or the cancellation of the task running it (a group
/// cancelled, a service that failed), asks the loop to end through `stop`. The thread is
/// waited for through a continuation the thread resumes, so no task blocks
/// a cooperative thread while it runs.
///
/// Each thread runs at a nice value of its own: the scrub's work is never
/// urgent next to the engine's. Beside ds4's cache code on two cores
/// (`Benchmarks/run ds4`), the engine is CPU-bound, and at nice 0 the
/// daemon's threads, about 6% of a core between them, preempted it some 150
/// times a second more than when it ran alone (involuntary context switches,
/// `/usr/bin/time -v`). Not nice 19, though: that starves them on a busy
/// machine (see `Daemon.run`).
struct ThreadService: Service, CustomStringConvertible {
    /// The thread's name, as ps -L shows it (at most 15 bytes are kept).
    let description: String
    /// The thread's nice value (0 to 19).
    let nice: Int32
    let logger: Logger
    let body: @Sendable () -> Void
    let stop: @Sendable () -> Void

    func run() async throws {
        let (name, nice, logger, body) = (description, nice, logger, body)
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                    let thread = Thread {
                        _ = kvs_set_thread_name(name) // as `ps -L`, `top -H` and /proc show it (at most 15 bytes)
                        let rc = kvs_set_thread_nice(nice)
                        if rc != 0 { logger.warning("cannot lower the thread's CPU priority", metadata: ["thread": "\(name)", "errno": "\(-rc)"]) }
                        body()
                        done.resume()
                    }
                    thread.start()
                }
            } onGracefulShutdown: { [stop] in
                stop()
            }
        } onCancel: { [stop] in
            stop()
        }
    }
}
