import Logging

/// Where the daemon's parts report what happened: one call logs the event
/// (its KVSCRUB_EVENT name, from which the journal handler sets MESSAGE_ID;
/// see `DaemonEvent.Kind.messageID`) and applies what it counts, under the
/// state lock together with any change the caller makes to the state for the
/// same occurrence, so `status` never shows the change without the count.
/// Each part holds one over the daemon's state and logger; there is no
/// global recorder.
public struct EventRecorder: Sendable {
    let state: DaemonState
    let logger: Logger

    public init(state: DaemonState, logger: Logger) {
        self.state = state
        self.logger = logger
    }

    /// Records `event`; `change` runs under the same lock as the count.
    public func record(_ event: DaemonEvent, alongside change: ((inout DaemonState.Inner) -> Void)? = nil) {
        if change != nil || !event.tally.isNothing {
            state.with { s in
                change?(&s)
                event.count(in: &s)
            }
        }
        logger.log(level: event.level, "\(event.message)", metadata: event.metadata)
    }

    /// Records the event `make` builds from the state, under the lock that counts it
    /// (for an event whose details are the state's, such as a pass's summary); nil records nothing.
    public func record(under make: (inout DaemonState.Inner) -> DaemonEvent?) {
        let event = state.with { s -> DaemonEvent? in
            guard let e = make(&s) else { return nil }
            e.count(in: &s)
            return e
        }
        guard let event else { return }
        logger.log(level: event.level, "\(event.message)", metadata: event.metadata)
    }
}

extension DaemonEvent.Tally {
    var isNothing: Bool { if case .nothing = self { true } else { false } }
}
