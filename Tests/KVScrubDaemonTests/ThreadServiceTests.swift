import Foundation
import Logging
import ServiceLifecycle
import Testing
@testable import KVScrubDaemon

/// A blocking loop run as a service ends when its group shuts down
/// gracefully and when its task is cancelled, and `run` returns once the
/// thread has.
@Suite struct ThreadServiceTests {
    static func service(_ stopping: StopFlag, ended: StopFlag) -> ThreadService {
        ThreadService(description: "test-loop", nice: 0, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() },
                      body: {
                          while !stopping.isSet { usleep(1000) } // the loop under test: a thread of its own, not the pool's
                          ended.set()
                      },
                      stop: { stopping.set() })
    }

    @Test(.timeLimit(.minutes(1))) func cancellingItsTask_endsTheLoop_andRunReturns() async throws {
        let stopping = StopFlag(), ended = StopFlag()
        let task = Task { try await Self.service(stopping, ended: ended).run() }
        task.cancel()
        try await task.value
        #expect(stopping.isSet && ended.isSet)
    }

    @Test(.timeLimit(.minutes(1))) func aGracefulShutdown_endsTheLoop_andTheGroupReturns() async throws {
        let stopping = StopFlag(), ended = StopFlag()
        let group = ServiceGroup(configuration: .init(services: [Self.service(stopping, ended: ended)],
                                                      logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }))
        let running = Task { try await group.run() }
        await group.triggerGracefulShutdown()
        try await running.value
        #expect(stopping.isSet && ended.isSet)
    }
}
