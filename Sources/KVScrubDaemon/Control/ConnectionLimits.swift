import NIOConcurrencyHelpers

/// Who may hold the control socket's connections, so that nobody can keep the
/// others out.
///
/// There are `total` connections at most. The last `reserved` of them are kept
/// for privileged peers (root, the daemon's user, the admin group), so an
/// operator can always get in to see what is wrong; and no single unprivileged
/// uid may hold more than `perUID`, so one user opening connections and keeping
/// them busy leaves room for everyone else. And no single process, root's
/// included, may hold more than `perProcess` (half the total by default): a
/// runaway root script cannot lock root's other processes (an operator's
/// `kvscrubd status`) out. Decided on connect, from the kernel's credentials
/// for the peer (`SO_PEERCRED`: pid, uid).
final class ConnectionLimits: Sendable {
    let total: Int
    let reserved: Int
    let perUID: Int
    let perProcess: Int

    private struct Counts {
        var all = 0
        var unprivileged = 0
        var byUID: [UInt32: Int] = [:]
        var byPID: [Int32: Int] = [:]
    }
    private let counts = NIOLockedValueBox(Counts())

    init(total: Int = 256, reserved: Int = 16, perUID: Int = 32, perProcess: Int? = nil) {
        self.total = total
        self.reserved = reserved
        self.perUID = perUID
        self.perProcess = perProcess ?? max(1, total / 2)
    }

    enum Admission: Sendable, Equatable {
        case admitted
        case refused(String)
    }

    /// Counts a new connection when there is room for this peer; nothing is counted when it is refused.
    func admit(uid: UInt32?, pid: Int32? = nil, privileged: Bool) -> Admission {
        counts.withLockedValue { c in
            guard c.all < total else { return .refused("too many connections (\(total)); try again") }
            if let pid, c.byPID[pid, default: 0] >= perProcess {
                return .refused("too many connections from process \(pid) (at most \(perProcess) per process); close some and try again")
            }
            if !privileged {
                guard c.unprivileged < total - reserved else {
                    return .refused("too many connections (\(total - reserved) open to unprivileged users; \(reserved) kept for root and the admin group); try again")
                }
                let key = uid ?? UInt32.max
                guard c.byUID[key, default: 0] < perUID else {
                    return .refused("too many connections from uid \(uid.map(String.init) ?? "unknown") (at most \(perUID) per user); close some and try again")
                }
                c.byUID[key, default: 0] += 1
                c.unprivileged += 1
            }
            if let pid { c.byPID[pid, default: 0] += 1 }
            c.all += 1
            return .admitted
        }
    }

    /// Gives back what `admit` counted for this peer.
    func leave(uid: UInt32?, pid: Int32? = nil, privileged: Bool) {
        counts.withLockedValue { c in
            c.all -= 1
            if let pid {
                let n = c.byPID[pid, default: 1] - 1
                c.byPID[pid] = n > 0 ? n : nil
            }
            guard !privileged else { return }
            c.unprivileged -= 1
            let key = uid ?? UInt32.max
            let n = c.byUID[key, default: 1] - 1
            c.byUID[key] = n > 0 ? n : nil
        }
    }

    /// Open connections: all, and unprivileged.
    var open: (all: Int, unprivileged: Int) { counts.withLockedValue { ($0.all, $0.unprivileged) } }
}
