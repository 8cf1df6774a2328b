import KVScrubControl

/// The scrub pass in progress, persisted so a restart resumes it.
public struct ScrubProgress: Codable, Sendable, Equatable {
    public var passStartedAt: Double?
    /// The last file name the pass finished; the pass goes on in name order after it.
    public var cursor: String?
    public var filesDone = 0
    public var bytesDone: UInt64 = 0
    public var corruptFound = 0
    public var removed = 0
    /// Files the pass in progress found corrupt at a first look.
    public var suspected: Int?
    public var lastPass: PassSummary?
    // Scrub control (optional: absent in older state files).
    /// Set by `scrub pause`, cleared by `scrub resume`; survives a restart.
    public var paused: Bool?
    public var pausedAt: Double?
    /// Time this pass spent paused, left out of its rate and ETA.
    public var pausedSeconds: Double?
    /// When a pass was last cancelled: the next one is due an interval after it.
    public var lastCancelledAt: Double?

    public init() {}
}

/// What the scrubber owns: the pass's progress, the read in progress and its
/// rate, the files waiting for the removal rule's second look, and the
/// removal brake. Kept in a `PartState`; only the scrubber changes it (the
/// control commands `scrub pause|resume|cancel` and `brake release` are the
/// scrubber's methods), the control handler and the metrics read it.
struct ScrubState: Sendable {
    var progress = ScrubProgress()
    /// Bytes per second over the last few seconds of scrubbing.
    var rate: Double = 0
    /// The file being verified now.
    var current: String?
    /// Set by `scrub cancel`: the read in progress is abandoned.
    var abort = false
    /// The removal brake (persisted).
    var brake = RemovalBrake()
    /// Files found corrupt, waiting for the removal rule's second look (name → when it is due; persisted).
    var pendingRemoval: [String: Double] = [:]
    /// For each file awaiting its second look because a scrub pass found it: that pass (its start
    /// time), so the confirmation still counts for it when the pass has ended meanwhile.
    var pendingPass: [String: Double] = [:]

    init() {}

    var passActive: Bool { progress.passStartedAt != nil }

    /// Seconds the pass in progress has spent paused, the current pause included.
    func pausedSecondsInPass(now: Double) -> Double {
        var paused = progress.pausedSeconds ?? 0
        if progress.paused == true, let at = progress.pausedAt, let started = progress.passStartedAt { paused += max(0, now - max(at, started)) }
        return paused
    }

    /// A file queued for its second look by the pass in progress.
    mutating func suspectedInPass(_ name: String) {
        guard let pass = progress.passStartedAt else { return }
        if pendingPass[name] == nil { progress.suspected = (progress.suspected ?? 0) + 1 }
        pendingPass[name] = pass
    }

    /// A corrupt file confirmed (and `removed` or not) while a pass runs counts for that pass.
    mutating func confirmedInPass(removed: Bool) {
        guard progress.passStartedAt != nil else { return }
        progress.corruptFound += 1
        if removed { progress.removed += 1 }
    }

    /// The second look of `name` settled: confirmed (removed or kept) or not. A pass that has
    /// already ended gets the outcome in its summary; a pass still running counts it as it goes.
    mutating func secondLookSettled(_ name: String, confirmed: Bool, removed: Bool) {
        guard let pass = pendingPass.removeValue(forKey: name), var last = progress.lastPass,
              abs(last.startedAt - pass) < 0.000_001 else { return }
        last.pendingSecondLooks = max(0, (last.pendingSecondLooks ?? 0) - 1)
        if confirmed {
            last.corruptFound += 1
            if removed { last.removed += 1 } else { last.kept = (last.kept ?? 0) + 1 }
        }
        progress.lastPass = last
    }

    /// Second looks still owed to the pass that started at `pass`.
    func pendingSecondLooks(of pass: Double) -> Int {
        pendingPass.values.filter { abs($0 - pass) < 0.000_001 }.count
    }
}
