import KVScrubControl

extension ControlCommand {
    /// Whether the answer needs blocking work (file reads, SQLite, the config file, waiting for the
    /// maintenance loop) and so runs off the socket's event loop; the rest are answered from memory on it.
    var blocks: Bool {
        switch self {
        // metrics: formats the whole exposition (some 100 series): kept off the loop that answers everyone's status.
        case .scrubNow, .evictNow, .history, .reload, .metrics, .brakeRestore: true
        case .ping, .status, .entries, .explain, .scrubStatus, .scrubStart, .scrubPause, .scrubResume,
             .scrubCancel, .brakeRelease: false
        }
    }
}
