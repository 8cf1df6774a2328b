import Foundation

/// The time of day as every part of the daemon reads it: when a pass is due,
/// when a new file's check is due, when a suspect file has settled, the
/// removal brake's hour, the regret window, the eviction summary, the orphan
/// sweep, the timestamps in the history and the state database. One clock,
/// given to `DaemonSettings` when the daemon is built, so a test can build the
/// parts over a clock it moves by hand and see in a moment what takes hours
/// (`Tests/KVScrubDaemonTests`, with `ManualClock`).
///
/// Seconds since the Unix epoch, as a `Double`, because that is what the
/// daemon keeps and persists. The threads' own waits (a semaphore's timeout,
/// inotify's) still run on the kernel's clock; a part steps by asking this
/// clock what is due, and reports how long it may sleep.
public protocol DaemonClock: Sendable {
    /// Seconds since the Unix epoch.
    func now() -> Double
}

/// The system's time of day.
public struct SystemClock: DaemonClock {
    public init() {}
    public func now() -> Double { Date().timeIntervalSince1970 }
}
