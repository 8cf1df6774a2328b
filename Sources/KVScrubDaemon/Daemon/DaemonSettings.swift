import NIOConcurrencyHelpers
import Synchronization

/// The settings in force and where the daemon is in its life, owned by the
/// lifecycle (`Daemon`): only it changes them (start-up, SIGHUP or `reload`,
/// readiness, the cache directory going and coming back, stopping). Every
/// part reads them; the lock is a leaf (nothing else is locked under it).
final class DaemonSettings: Sendable {
    /// Where the daemon is in its life; `status` shows it (its raw value) unless it is `running`.
    enum Phase: String, Sendable {
        case starting
        case waitingForDirectory = "waiting for the cache directory"
        case running
        case stopping
    }

    /// The time of day for every part (`DaemonClock`): the system's, or a test's.
    let clock: any DaemonClock
    /// When this daemon started, by `clock`.
    let startedAt: Double
    private let current: NIOLockedValueBox<(config: DaemonConfig, phase: Phase)>

    init(config: DaemonConfig, clock: any DaemonClock = SystemClock()) {
        self.clock = clock
        startedAt = clock.now()
        current = NIOLockedValueBox((config, .starting))
    }

    var config: DaemonConfig { current.withLockedValue { $0.config } }

    /// One setting, without copying the whole configuration (for the hot paths: every request's access
    /// check, every paced read of the scrub).
    func setting<T>(_ key: KeyPath<DaemonConfig, T>) -> T { current.withLockedValue { $0.config[keyPath: key] } }
    var phase: Phase { current.withLockedValue { $0.phase } }

    /// Settings a reload took (the lifecycle's; tests set a scene with it).
    func use(_ config: DaemonConfig) { current.withLockedValue { $0.config = config } }

    func enter(_ phase: Phase) { current.withLockedValue { $0.phase = phase } }
}

/// Set once, when the daemon is asked to stop; read by every loop.
final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    init() {}
    var isSet: Bool { flag.load(ordering: .acquiring) }
    func set() { flag.store(true, ordering: .releasing) }
}
