import Foundation
import KVCFormat
import NIOConcurrencyHelpers
#if canImport(Glibc)
import Glibc
#endif

/// Faults the crash and disk-fault tests inject, honoured only when the daemon
/// runs with KVSCRUBD_TEST_FAULTS=1 (the tests set it; a packaged daemon never
/// does, and without it every method here is a no-op):
///
/// - `KVSCRUBD_TEST_KILL_AT=STEP`: the daemon SIGKILLs itself at that step of a
///   removal (`verdict`, `renamed`, `inode-checked`, `unlinking`, `unlinked`,
///   the points of `CacheDirectory.RemovalStep`) or of a state save
///   (`state-written`: inside the state database's transaction, every row
///   written, not committed; `state-committed`). A real SIGKILL at a real point, so the restart that
///   follows meets exactly what a crash there leaves.
/// - `KVSCRUBD_TEST_STATE_EIO=N`: the next N state database writes fail with EIO. This
///   one is a stand-in: the real fault needs a disk that returns I/O errors
///   (device-mapper's error target), which this workplace's kernel does not
///   offer, so the error is raised where the write would have failed.
///   ENOSPC and read-only file systems are produced for real by the tests.
/// - `KVSCRUBD_TEST_DB_CHECK_SECONDS=S`: the state database checks itself every
///   S seconds instead of every minute, so a test need not wait a minute.
/// - SIGUSR2: the maintenance loop hangs (and so stops feeding systemd's
///   watchdog), for the watchdog tests. Trapped only under KVSCRUBD_TEST_FAULTS=1
///   (`Daemon.run`); the control protocol has no test command.
///
/// Internal: the daemon's parts and the tests (`@testable`) see it; the library's API does not.
final class TestFaults: Sendable {
    let enabled: Bool
    let killAt: String?
    /// `KVSCRUBD_TEST_DB_CHECK_SECONDS`: how often the state database checks itself (default 60 s).
    let databaseCheckSeconds: Double?
    private let stateEIO: NIOLockedValueBox<Int>

    init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        enabled = environment["KVSCRUBD_TEST_FAULTS"] == "1"
        killAt = enabled ? environment["KVSCRUBD_TEST_KILL_AT"] : nil
        databaseCheckSeconds = enabled ? Double(environment["KVSCRUBD_TEST_DB_CHECK_SECONDS"] ?? "") : nil
        stateEIO = NIOLockedValueBox(enabled ? Int(environment["KVSCRUBD_TEST_STATE_EIO"] ?? "") ?? 0 : 0)
    }

    /// A point a crash test may kill the daemon at (`KVSCRUBD_TEST_KILL_AT` names it).
    enum Point: Equatable {
        /// A step of the removal rule (`CacheDirectory.RemovalStep`).
        case removal(CacheDirectory.RemovalStep)
        /// Inside the state database's transaction, every row written, not committed.
        case stateWritten
        /// The state database's transaction committed.
        case stateCommitted

        /// The name `KVSCRUBD_TEST_KILL_AT` gives it.
        var name: String {
            switch self {
            case .removal(let step): step.rawValue
            case .stateWritten: "state-written"
            case .stateCommitted: "state-committed"
            }
        }
    }

    /// Dies here, at once, if a test asked for a crash at `point`.
    func reached(_ point: Point) {
        guard let killAt, killAt == point.name else { return }
        kill(getpid(), SIGKILL)
    }

    /// True when this state save must fail as a disk returning EIO would make it.
    func stateWriteFails() -> Bool {
        stateEIO.withLockedValue { n in
            guard n > 0 else { return false }
            n -= 1
            return true
        }
    }
}
