import Foundation
import KVScrubControl
import Logging

/// The evictions of the last few minutes, counted for one notice-level log
/// line: single evictions are logged at info (a busy cache evicts all day, and
/// a notice per file buries what needs a person), and the summary says at
/// notice how many went, how many bytes, and why.
struct EvictionSummary: Sendable {
    /// Seconds one summary covers.
    let interval: Double
    private(set) var windowStart: Double
    private var files: [Evictor.Cause: Int] = [:]
    private var bytes: UInt64 = 0
    private var dryRun = false

    init(interval: Double, now: Double) {
        self.interval = interval
        windowStart = now
    }

    mutating func add(_ cause: Evictor.Cause, bytes: UInt64, dryRun: Bool) {
        files[cause, default: 0] += 1
        self.bytes += bytes
        self.dryRun = self.dryRun || dryRun
    }

    /// Seconds until the summary of the evictions counted so far is due; nil when none were counted.
    func dueIn(now: Double) -> Double? {
        files.isEmpty ? nil : max(0, windowStart + interval - now)
    }

    /// The event to record when the window is over and anything was evicted in it (then a new window starts).
    mutating func due(now: Double) -> DaemonEvent? {
        guard now - windowStart >= interval else { return nil }
        defer { windowStart = now; files = [:]; bytes = 0; dryRun = false }
        let total = files.values.reduce(0, +)
        guard total > 0 else { return nil }
        let causes = [Evictor.Cause.budget, .freeSpace, .incompatible, .superseded].compactMap { c in files[c].map { "\($0) \(c.rawValue)" } }
        let message = (dryRun ? "would have evicted " : "evicted ") + "\(total) files (\(ByteText.short(bytes))) in the last " +
            DurationText.short(now - windowStart) + ": " + causes.joined(separator: ", ")
        var metadata: Logger.Metadata = ["files": "\(total)", "bytes": "\(bytes)", "seconds": "\(Int(now - windowStart))"]
        for (c, n) in files { metadata["files_" + c.rawValue.replacingOccurrences(of: "-", with: "_")] = "\(n)" }
        return DaemonEvent(dryRun ? .wouldEvictSummary : .evictionSummary, .notice, message, metadata)
    }
}
