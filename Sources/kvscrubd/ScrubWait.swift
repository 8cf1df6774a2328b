import ArgumentParser
import Foundation
import KVScrubControl

/// `scrub wait` and `scrub start --wait`: follows one pass, named by the time it
/// started (`passStartedAt`), to its end, by asking the daemon for the scrub's
/// state once a second. The pass ends in one of two ways the status shows: its
/// summary becomes the last pass (completed), or no pass of that start time is
/// running any more without one (cancelled). A pass that a daemon restart
/// resumes keeps its start time, so waiting goes on across it as long as each
/// request is answered. A file the pass found corrupt is removed only after a
/// second look once it has settled, which can come after the pass ends: the
/// wait goes on until every second look the pass asked for has settled, and
/// exits 1 if any confirmed the damage.
struct ScrubWait {
    var options: SocketOptions
    /// Seconds between two looks at the scrub.
    var interval: Double = 1

    /// What `--json` prints when the wait ends.
    struct Result: Encodable {
        var ok: Bool
        /// completed, cancelled, or none-running.
        var outcome: String
        var pass: PassSummary?
    }

    func run(pass: Double?) throws {
        guard let pass else {
            let last = try scrub().lastPass
            if options.json { options.printJSON(Result(ok: true, outcome: "none-running", pass: last)); return }
            print("no scrub pass is running" + (last.map { "; the last one " + Self.summary($0) } ?? ""))
            return
        }
        let progress = ProgressLine(fd: STDOUT_FILENO, enabled: !options.json)
        var lastStep = -1
        var lastPaused = false
        while true {
            let sc = try scrub()
            if let last = sc.lastPass, abs(last.startedAt - pass) < 0.001 {
                if let owed = last.pendingSecondLooks, owed > 0 {
                    let text = "scrub pass ended; waiting for the second look at \(owed) file\(owed == 1 ? "" : "s") it found corrupt " +
                        "(each once left alone for the settle time)"
                    if progress.enabled { progress.show(text) } else if !options.json && lastStep != -2 { print(text); fflush(nil) }
                    lastStep = -2
                    Thread.sleep(forTimeInterval: interval)
                    continue
                }
                progress.finish()
                try finish(last)
                return
            }
            guard sc.active, let running = sc.passStartedAt, abs(running - pass) < 0.001 else {
                progress.finish()
                if options.json { options.printJSON(Result(ok: false, outcome: "cancelled", pass: nil)) } else {
                    print("the scrub pass was cancelled before it ended")
                }
                throw ExitCode(3)
            }
            let text = Self.progressText(sc)
            if progress.enabled {
                progress.show(text)
            } else if !options.json {
                // A plain line per tenth of the pass, and when it pauses or resumes.
                let step = sc.filesTotal > 0 ? sc.filesDone * 10 / sc.filesTotal : 0
                if step != lastStep || sc.paused != lastPaused { print(text); fflush(nil) }
                lastStep = step
            }
            lastPaused = sc.paused
            Thread.sleep(forTimeInterval: interval)
        }
    }

    private func scrub() throws -> StatusReport.Scrub {
        guard let sc = try options.send(ControlRequest(cmd: "scrub-status")).scrub else {
            throw options.fail("the daemon's reply has no scrub status", exitStatus: 2)
        }
        return sc
    }

    private func finish(_ last: PassSummary) throws {
        let clean = last.corruptFound == 0
        if options.json {
            options.printJSON(Result(ok: clean, outcome: "completed", pass: last))
        } else {
            print("scrub pass " + Self.summary(last))
            if !clean { print("'kvscrubd history --cause corrupt' lists the corrupt files and what was done with them") }
        }
        if !clean { throw ExitCode(1) }
    }

    /// "completed in 2m 5s: 120 files, 1.2 GiB, 1 found corrupt, 1 confirmed, 1 removed, 0 kept".
    static func summary(_ p: PassSummary) -> String {
        var s = "completed in \(DurationText.short(p.endedAt - p.startedAt)): \(p.files) files, \(ByteText.short(p.bytes)), "
        if let found = p.suspected {
            s += "\(found) found corrupt, \(p.corruptFound) confirmed, \(p.removed) removed, \(p.kept ?? 0) kept"
            if let owed = p.pendingSecondLooks, owed > 0 { s += ", \(owed) awaiting a second look" }
        } else {
            s += "\(p.corruptFound) corrupt, \(p.removed) removed"
        }
        return s
    }

    /// "scrub 42%: 1234 of 2900 files, 1.2 GiB of 3.0 GiB, 47.7 MiB/s, 35s to go, 0 corrupt".
    static func progressText(_ sc: StatusReport.Scrub) -> String {
        let pct = sc.filesTotal > 0 ? sc.filesDone * 100 / sc.filesTotal : 100
        var t = "scrub \(pct)%: \(sc.filesDone) of \(sc.filesTotal) files, \(ByteText.short(sc.bytesDone)) of \(ByteText.short(sc.bytesTotal))"
        if sc.paused {
            t += ", PAUSED ('kvscrubd scrub resume' goes on)"
        } else {
            t += ", \(ByteText.short(UInt64(max(0, sc.rateBytesPerSecond))))/s"
            if let eta = sc.etaSeconds { t += ", \(DurationText.short(eta)) to go" }
        }
        return t + ", \(sc.corruptFound ?? 0) corrupt"
    }
}

/// One line on a terminal, rewritten in place (carriage return, erase line):
/// on stdout for `scrub wait`, on stderr for `verify`. Disabled when that
/// stream is not a terminal.
struct ProgressLine {
    let fd: Int32
    let enabled: Bool

    init(fd: Int32, enabled: Bool = true) {
        self.fd = fd
        self.enabled = enabled && isatty(fd) == 1
    }

    func show(_ text: String) { write("\r\u{1B}[K" + text) }

    /// Clears the line so the next output starts on a clean one.
    func finish() { write("\r\u{1B}[K") }

    private func write(_ s: String) {
        guard enabled else { return }
        fflush(nil) // what print() buffered comes first
        FileHandle(fileDescriptor: fd, closeOnDealloc: false).write(Data(s.utf8))
    }
}
