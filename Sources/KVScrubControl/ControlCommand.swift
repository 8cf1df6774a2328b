/// Every request the control socket knows, by its name on the wire
/// (`{"cmd":"scrub-start"}`). A name not listed here is refused before any
/// policy or handler sees it; what each may do (here) and where the daemon
/// runs it (`ControlCommand.blocks`, in the daemon) are exhaustive switches, so a
/// new command cannot be added without deciding both.
public enum ControlCommand: String, CaseIterable, Sendable {
    case ping
    case status
    case entries
    case explain
    case metrics
    case history
    case scrubStatus = "scrub-status"
    case scrubStart = "scrub-start"
    case scrubPause = "scrub-pause"
    case scrubResume = "scrub-resume"
    case scrubCancel = "scrub-cancel"
    case scrubNow = "scrub-now"
    case brakeRelease = "brake-release"
    /// The brake released and its quarantine put back in the cache (`brake release --restore`).
    case brakeRestore = "brake-restore"
    case reload
    case evictNow = "evict-now"

    /// Who may ask (`AccessPolicy`).
    public enum Access: Sendable {
        /// Anyone who can connect.
        case read
        /// Root, the daemon's user, or the admin group.
        case change
    }

    public var access: Access {
        switch self {
        case .ping, .status, .entries, .explain, .metrics, .history, .scrubStatus: .read
        case .scrubStart, .scrubPause, .scrubResume, .scrubCancel, .scrubNow, .brakeRelease, .brakeRestore, .reload, .evictNow: .change
        }
    }

    /// The names a client may use, for error messages.
    public static var publicNames: String {
        allCases.map(\.rawValue).joined(separator: ", ")
    }
}
