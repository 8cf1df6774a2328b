import NIOConcurrencyHelpers

/// One part's state behind a lock of its own. Each part of the daemon keeps
/// what it owns in one of these (the index maintainer its `IndexState`, the
/// scrubber its `ScrubState`, the event recorder its `CounterState`) and is
/// the only one to change it, through its own methods; the other parts read
/// it (`read`), which costs them the lock for as long as they look.
///
/// Locks are taken in one order, so two parts' states can be changed or read
/// together without deadlock: the index, then the scrub, then the counters
/// (an event counted together with the change it reports). `DaemonSettings`
/// is a leaf: nothing is locked while its lock is held. Whoever holds one of
/// these locks does in-memory work only, never I/O, so the control socket's
/// readers never wait behind a disk. The lock is `NIOLockedValueBox`, the
/// daemon's one lock type: a pthread mutex, which ThreadSanitizer follows.
final class PartState<Value: Sendable>: Sendable {
    private let value: NIOLockedValueBox<Value>

    init(_ initial: Value) { value = NIOLockedValueBox(initial) }

    /// Reads the state under its lock.
    func read<T>(_ body: (Value) -> T) -> T { value.withLockedValue { body($0) } }

    /// Changes the state under its lock: for the part that owns it (and for tests that set a scene).
    func change<T>(_ body: (inout Value) -> T) -> T { value.withLockedValue { body(&$0) } }
}
