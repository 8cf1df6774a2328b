import KVScrubControl
import Logging

/// What the event recorder owns: the daemon's counters (several persist in
/// the state database), the last errors `status` shows, and the engine's own
/// deletions over the last day. Only `DaemonEvent.count` changes them, through
/// the recorder, and the scrub throttle's byte count (`scrubbed`).
struct CounterState: Sendable {
    var counters = DaemonCounters()
    var lastErrors: [String] = []
    /// The engine's own deletions over the last day (this run), for `status`.
    var engineDeletions = HourlyWindow()

    init() {}

    mutating func noteError(_ message: String, now: Double) {
        counters.errors += 1
        lastErrors.append("\(Int(now)) \(message)")
        if lastErrors.count > 10 { lastErrors.removeFirst(lastErrors.count - 10) }
    }
}

/// Where the daemon's parts report what happened: one call logs the event
/// (its KVSCRUB_EVENT name, from which the journal handler sets MESSAGE_ID;
/// see `DaemonEvent.Kind.messageID`) and applies what it counts. A part that
/// changes its own state for the same occurrence passes its state along, and
/// the change and the count are made together, under its lock and then the
/// counters' (the lock order of `PartState`), so `status`, which reads the
/// parts in that order, never shows the change without the count.
/// Each part holds one; there is no global recorder.
struct EventRecorder: Sendable {
    /// The counters, which the recorder owns.
    let counts: PartState<CounterState>
    let clock: any DaemonClock
    let logger: Logger

    init(counts: PartState<CounterState>, clock: any DaemonClock, logger: Logger) {
        self.counts = counts
        self.clock = clock
        self.logger = logger
    }

    /// Records `event`.
    func record(_ event: DaemonEvent) {
        count(event)
        log(event)
    }

    /// Records `event` together with `change` to a part's state (`part`, which the caller owns).
    func record<V>(_ event: DaemonEvent, changing part: PartState<V>, _ change: (inout V) -> Void) {
        part.change { v in
            change(&v)
            count(event)
        }
        log(event)
    }

    /// Records the event `make` builds from a part's state while it changes it (for an event whose
    /// details are the state's, such as a pass's summary); nil records nothing.
    func record<V>(changing part: PartState<V>, _ make: (inout V) -> DaemonEvent?) {
        let event = part.change { v -> DaemonEvent? in
            guard let e = make(&v) else { return nil }
            count(e)
            return e
        }
        guard let event else { return }
        log(event)
    }

    /// The counters the state database kept (start-up). The ones of this run only start at zero.
    func restore(_ saved: DaemonCounters) {
        counts.change { c in
            c.counters = saved
            c.counters.inotifyEvents = 0
            c.counters.rescans = 0
            c.counters.errors = 0
        }
    }

    /// Bytes the scrub read: progress, counted by the throttle as it reads, not an event.
    func scrubbed(bytes: UInt64) {
        counts.change { $0.counters.scrubBytes += bytes }
    }

    private func count(_ event: DaemonEvent) {
        guard !event.tally.isNothing else { return }
        let now = clock.now()
        counts.change { event.count(in: &$0, now: now) }
    }

    private func log(_ event: DaemonEvent) {
        logger.log(level: event.level, "\(event.message)", metadata: event.metadata)
    }
}

extension DaemonEvent.Tally {
    var isNothing: Bool { if case .nothing = self { true } else { false } }
}
