import ArgumentParser
import Foundation
import KVCFormat
import KVScrubControl

/// Flags every socket client shares.
struct SocketOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The daemon's control socket (default: $KVSCRUBD_SOCKET if set; for a user other than root running the kvscrubd-agent user unit, its socket; else the system daemon's).", valueName: "path"))
    var socket: String = SocketOptions.defaultSocket

    /// The system daemon's socket (the packaged kvscrubd.socket).
    static let systemSocket = "/run/kvscrubd/kvscrubd.sock"

    /// The socket of the user's own daemon for ds4-agent's sessions (the kvscrubd-agent user unit).
    static var userAgentSocket: String? {
        guard getuid() != 0, let rt = ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"], !rt.isEmpty else { return nil }
        return rt + "/kvscrubd/agent.sock"
    }

    /// `KVSCRUBD_SOCKET` when set and not empty; else, for a user other than root whose
    /// kvscrubd-agent user unit runs, its socket; else the packaged unit's socket.
    static var defaultSocket: String {
        if let s = ProcessInfo.processInfo.environment["KVSCRUBD_SOCKET"], !s.isEmpty { return s }
        if let u = userAgentSocket, (try? FileStatus.of(path: u))?.isSocket == true { return u }
        return systemSocket
    }

    @Flag(name: .long, help: "Print JSON instead of text.")
    var json = false

    func send(_ request: ControlRequest, timeout: Double = 10) throws -> ControlResponse {
        do {
            var client = ControlClient(path: socket)
            client.timeout = timeout
            let r = try client.send(request)
            if !r.ok { throw fail(r.error ?? "the daemon refused the request", exitStatus: 1) }
            return r
        } catch let e as ControlClientError {
            throw fail("\(e)", exitStatus: 2)
        }
    }

    /// Says why on stderr and, with --json, as a JSON object on stdout too, so a
    /// script reading stdout never gets nothing: {"ok":false,"error":...,"exit_status":N}.
    func fail(_ message: String, exitStatus: Int32) -> ExitCode {
        Output.error(message)
        if json { printJSON(JSONError(ok: false, error: message, exitStatus: exitStatus)) }
        return ExitCode(exitStatus)
    }

    private struct JSONError: Encodable {
        var ok: Bool
        var error: String
        var exitStatus: Int32
    }

    func printJSON<T: Encodable>(_ value: T) {
        print(String(decoding: (try? ControlResponse.encoder().encode(value)) ?? Data(), as: UTF8.self))
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the running daemon's state: files, bytes vs budget, free space, scrub progress, removals, errors.",
        discussion: "With -v, also the last removals and quarantines (as 'zpool status -v' lists damaged files; 'kvscrubd history' has them all).\nExit status: 0 success; 1 the daemon refused the request; 2 the daemon could not be reached.")

    @OptionGroup var options: SocketOptions

    @Flag(name: [.short, .long], help: "Also list the last 10 files removed or quarantined as corrupt.")
    var verbose = false

    func run() throws {
        guard let s = try options.send(ControlRequest(cmd: "status")).status else { throw ExitCode(2) }
        let removals = verbose ? (try options.send(ControlRequest(cmd: "history", cause: "corrupt", limit: 10)).history ?? []) : nil
        if options.json {
            if let removals { options.printJSON(VerboseJSON(status: s, recentRemovals: removals)) } else { options.printJSON(s) }
            return
        }
        print(StatusText.render(s))
        if let removals {
            print("")
            print(removals.isEmpty ? "no corrupt files removed or quarantined (within history_days)" : "last corrupt files removed or quarantined:")
            for line in HistoryCommand.lines(removals) { print("  " + line) }
        }
    }

    struct VerboseJSON: Encodable {
        var status: StatusReport
        var recentRemovals: [HistoryEvent]
    }
}

struct EntriesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "entries",
        abstract: "List the daemon's index in eviction order, with each file's score and its parts.",
        discussion: "Exit status: 0 success; 1 the daemon refused the request; 2 the daemon could not be reached.")

    @OptionGroup var options: SocketOptions

    func run() throws {
        let reply = try options.send(ControlRequest(cmd: "entries"))
        let entries = reply.entries ?? []
        if options.json { options.printJSON(EntriesJSON(entries: entries, engineAbi: reply.engineAbi)); return }
        if let abi = reply.engineAbi { print("engine generation: \(abi.description)") }
        print(Output.pad("RANK", 6) + Output.pad("SCORE", 14) + Output.pad("HITS", 7) + Output.pad("EFF.HITS", 10) +
              Output.pad("TOKENS", 9) + Output.pad("SIZE", 11) + Output.pad("REASON", 14) + Output.pad("VERDICT", 9) + Output.pad("SUMS", 9) + "FILE")
        for e in entries {
            print(Output.pad("\(e.rank)", 6) + Output.pad(String(format: "%.6g", e.score), 14) + Output.pad("\(e.hits ?? 0)", 7) +
                  Output.pad(String(format: "%.3g", e.effectiveHits), 10) + Output.pad("\(e.tokens ?? 0)", 9) +
                  Output.pad(Output.bytes(e.size), 11) + Output.pad(e.reason ?? "-", 14) + Output.pad(e.verdict ?? "-", 9) + Output.pad(e.checksums ?? "-", 9) + e.name +
                  (e.unusable.map { "  (unusable: \($0))" } ?? "") + (e.superseded == true ? "  (superseded)" : ""))
        }
        print("\(entries.count) checkpoints; rank 1 is evicted first; VERDICT is the last scrub's since the daemon started; " +
              "SUMS: crc32c (v2), recorded (v1 with a recorded checksum), none (v1, not yet); 'kvscrubd explain SHA' says why")
    }
}

struct EntriesJSON: Encodable {
    var entries: [EntryReport]
    var engineAbi: EngineABI.Resolution?
}

/// The `zpool status`-like summary.
enum StatusText {
    static func render(_ s: StatusReport) -> String {
        var lines: [String] = []
        func row(_ k: String, _ v: String) { lines.append(Output.pad(k + ":", 11) + v) }
        if let b = s.brake, b.engaged {
            lines += brakeLines(b)
            if b.action == "quarantine" {
                row("action", "inspect the quarantined files (kvscrubd verify \(b.quarantine)), then 'kvscrubd brake release' (--restore puts them back)")
            } else {
                row("action", "inspect the corrupt files ('kvscrubd entries' shows their verdicts; kvscrubd verify), then 'kvscrubd brake release'")
            }
        }
        for a in actions(s, now: Date().timeIntervalSince1970) { row("action", a) }
        row("state", s.state + (s.dryRun ? " (dry run: nothing is removed)" : ""))
        row("cache", s.cacheDir)
        let pct = s.budgetBytes > 0 ? String(format: " (%.0f%%)", Double(s.bytes) * 100 / Double(s.budgetBytes)) : ""
        row("files", "\(s.files) checkpoints, \(Output.bytes(s.bytes)) of \(s.budgetBytes > 0 ? Output.bytes(s.budgetBytes) : "no") budget\(pct)" +
            (s.incompatibleFiles > 0 ? ", \(s.incompatibleFiles) incompatible" : ""))
        if let free = s.freeBytes, let fs = s.filesystemBytes, fs > 0 {
            row("space", String(format: "%@ free of %@ (%.1f%%)", Output.bytes(free), Output.bytes(fs), Double(free) * 100 / Double(fs)))
        }
        if let k = s.checksums {
            var line = "\(k.inFile) with CRC32C in the file (v2), \(k.recorded) v1 with a recorded checksum"
            if k.notYetRecorded > 0 { line += ", \(k.notYetRecorded) v1 not yet recorded (structure checks only until their next verification)" }
            row("checksums", line)
        }
        if let abi = s.engineAbi { row("engine", "\(abi.description) (\(s.engineAbiSetting ?? "auto"))") }
        scrubRows(s.scrub, row)
        let c = s.counters
        row("corrupt", "\(c.corruptFound) found, \(c.corruptRemoved) removed (all time)" +
            ((c.corruptQuarantined ?? 0) > 0 ? ", \(c.corruptQuarantined!) of them to quarantine" : "") +
            ((s.pendingRemovals ?? 0) > 0 ? "; \(s.pendingRemovals!) awaiting a second look" : "") +
            ((c.corruptUnconfirmed ?? 0) > 0 ? "; \(c.corruptUnconfirmed!) not confirmed (file changed or read ok)" : ""))
        row("evicted", "\(c.evictedFiles) files, \(Output.bytes(c.evictedBytes)) " +
            "(budget \(c.evictedBudget), free space \(c.evictedFreeSpace), incompatible \(c.evictedIncompatible)" +
            ((c.evictedSuperseded ?? 0) > 0 ? ", superseded generation \(c.evictedSuperseded!)" : "") + ")")
        let gens = s.generations ?? []
        if gens.count > 1 || gens.contains(where: { !$0.inForce }) {
            let now = Date().timeIntervalSince1970
            for g in gens {
                var line = "\(g.description): \(g.files) files, \(Output.bytes(g.bytes))"
                if g.agentSessions > 0 { line += " (\(g.agentSessions) ds4-agent sessions, never reclaimed)" }
                if let a = g.newestActivity { line += ", newest activity \(DurationText.short(max(0, now - a))) ago" }
                if g.inForce { line += " [in force]" } else if g.superseded { line += " [superseded: being reclaimed]" }
                else if let at = g.reclaimAt { line += " [superseded; reclaimed in \(DurationText.short(max(0, at - now)))]" }
                else if g.key == "unknown" { line += " [never reclaimed]" }
                else if s.supersededGraceHours == nil { line += " [superseded_grace_hours off]" }
                else { line += " [kept: the engine in force has written nothing since]" }
                row("generation", line)
            }
        }
        if let d = s.engineDeletedLastDay, d.files > 0 {
            row("engine", "deleted \(d.files) checkpoints itself in the last day (\(Output.bytes(d.bytes))): its eviction, failed restores, replaced files")
        }
        if let n = c.orphansRemoved, n > 0 {
            row("temporary", "\(n) files an engine left behind removed (\(Output.bytes(c.orphanBytesRemoved ?? 0)))")
        }
        if let r = s.regret {
            row("regret", "\(r.lastDay) in the last day, \(r.total) all time (evicted, then written again within \(DurationText.short(r.windowHours * 3600)))")
            if let advice = r.advice { row("advice", advice) }
        }
        row("errors", s.lastErrors.isEmpty ? "none" : "\(c.errors); last: " + readableError(s.lastErrors.last!, now: Date().timeIntervalSince1970))
        return lines.joined(separator: "\n")
    }

    /// What needs a person, besides the brake (above): a paused or overdue scrub, recent errors.
    static func actions(_ s: StatusReport, now: Double) -> [String] {
        var out: [String] = []
        let sc = s.scrub
        if sc.paused {
            out.append("scrubbing is paused: nothing is verified until 'kvscrubd scrub resume'")
        } else if let last = sc.lastPass, let next = sc.nextPassAt, now - last.endedAt > 2 * max(1, next - last.startedAt) {
            out.append("the last complete scrub pass ended \(DurationText.short(now - last.endedAt)) ago, more than two intervals: raise scrub_rate_mb_per_s or scrub_interval_hours")
        }
        if let last = s.lastErrors.last, let (at, _) = errorParts(last), now - at < 3600 {
            out.append("errors in the last hour: 'journalctl -u kvscrubd -p err' has them all")
        }
        return out
    }

    /// "1795794349 save state …" as "3m ago (2026-11-27 15:45:49 UTC): save state …".
    static func readableError(_ line: String, now: Double) -> String {
        guard let (at, message) = errorParts(line) else { return line }
        let f = DateFormatter()
        f.dateFormat = "yyyy-MM-dd HH:mm:ss 'UTC'"
        f.timeZone = TimeZone(identifier: "UTC")
        return "\(DurationText.short(max(0, now - at))) ago (\(f.string(from: Date(timeIntervalSince1970: at)))): \(message)"
    }

    /// A `last_errors` line as the daemon writes it: Unix seconds, a space, the message.
    static func errorParts(_ line: String) -> (at: Double, message: Substring)? {
        let parts = line.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, let at = Double(parts[0]) else { return nil }
        return (at, parts[1])
    }

    /// The removal brake, at the top of `status` when engaged, and `brake status`.
    static func brakeLines(_ b: StatusReport.Brake) -> [String] {
        guard b.engaged else {
            return ["removal brake: off (limit \(b.limit); last hour: \(b.corruptLastHour) proven corrupt of \(b.verifiedLastHour) verified)"]
        }
        let since = b.engagedAt.map { " " + DurationText.short(Date().timeIntervalSince1970 - $0) + " ago" } ?? ""
        let where_ = b.action == "quarantine" ? "moved to \(b.quarantine)" : "kept where they are"
        return ["REMOVAL BRAKE ENGAGED\(since): \(b.reason ?? "too many corrupt files")",
                "  \(b.heldBack) corrupt files held back, \(where_), instead of removed; a format or engine-generation",
                "  mismatch or a failing disk is likelier than that much independent damage"]
    }

    /// The scrub part, shared by `status` and `scrub status`.
    static func scrubRows(_ sc: StatusReport.Scrub, _ row: (String, String) -> Void) {
        // One unit family with the rate (binary); the setting's own decimal MB/s in brackets.
        let limit = sc.limitMBps > 0 ? "limit \(Output.bytes(UInt64(sc.limitMBps * 1e6)))/s = scrub_rate_mb_per_s \(String(format: "%g", sc.limitMBps))" : "no limit"
        if sc.active {
            let done = sc.filesTotal > 0 ? Double(sc.filesDone) * 100 / Double(max(sc.filesTotal, 1)) : 100
            var line = (sc.paused ? "PAUSED, " : "in progress, ")
            line += String(format: "%d of %d files (%.0f%%), %@ of %@", sc.filesDone, sc.filesTotal, done, Output.bytes(sc.bytesDone), Output.bytes(sc.bytesTotal))
            if !sc.paused { line += String(format: ", %@/s", Output.bytes(UInt64(sc.rateBytesPerSecond))) }
            line += " (\(limit))"
            if let eta = sc.etaSeconds { line += ", " + DurationText.short(eta) + (sc.paused ? " of scrubbing to go once resumed" : " to go") }
            if sc.pausedSeconds >= 1 { line += ", paused " + DurationText.short(sc.pausedSeconds) + " so far" }
            row("scrub", line)
        } else if sc.paused {
            row("scrub", "PAUSED (no pass running; new files wait too) (\(limit))")
        } else if let next = sc.nextPassAt {
            row("scrub", "idle; next pass in " + DurationText.short(max(0, next - Date().timeIntervalSince1970)) + " (\(limit))")
        }
        if let last = sc.lastPass {
            row("last pass", "finished \(DurationText.short(Date().timeIntervalSince1970 - last.endedAt)) ago in \(DurationText.short(last.endedAt - last.startedAt)): " +
                "\(last.files) files, \(Output.bytes(last.bytes)), \(last.corruptFound) corrupt, \(last.removed) removed")
        } else {
            row("last pass", "none yet")
        }
    }
}
