import ArgumentParser
import Foundation
import KVScrubControl

/// `kvscrubd history`: what the daemon removed, quarantined or evicted, and why,
/// from its state database (kept `history_days`).
struct HistoryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "history",
        abstract: "List the files the daemon removed, quarantined or evicted, newest first, with the cause.",
        discussion: """
            Each line: when, what was done (removed, quarantined, kept-in-place, evicted), the cause \
            (corrupt, budget, free-space, incompatible, superseded), the file and its size; for corrupt files the \
            region, what was wrong and the expected and actual CRC32C. Kept for history_days (90 by default).
            Exit status: 0 success; 1 the daemon refused the request; 2 the daemon could not be reached.
            """)

    @OptionGroup var options: SocketOptions

    @Option(name: .long, help: ArgumentHelp(
        "Only events since then: a duration back from now (30m, 12h, 7d) or a date (2026-11-27, 2026-11-27T14:00:00Z).",
        valueName: "when"))
    var since: String?

    @Option(name: .long, help: ArgumentHelp("Only this cause: corrupt, budget, free-space, incompatible or superseded.", valueName: "cause"))
    var cause: String?

    @Option(name: .long, help: ArgumentHelp("At most this many events (newest first; at most 10000).", valueName: "n"))
    var limit = 100

    func validate() throws {
        if let since, Self.parseSince(since, now: Date().timeIntervalSince1970) == nil {
            throw ValidationError("--since takes a duration (30m, 12h, 7d) or a date (2026-11-27 or 2026-11-27T14:00:00Z), not '\(since)'")
        }
        if let cause, !HistoryEvent.causes.contains(cause) {
            throw ValidationError("--cause takes one of \(HistoryEvent.causes.joined(separator: ", ")), not '\(cause)'")
        }
        guard limit >= 1 && limit <= 10_000 else { throw ValidationError("--limit takes 1 to 10000") }
    }

    func run() throws {
        let from = since.flatMap { Self.parseSince($0, now: Date().timeIntervalSince1970) }
        let events = try options.send(ControlRequest(cmd: "history", since: from, cause: cause, limit: limit)).history ?? []
        if options.json { options.printJSON(HistoryJSON(events: events)); return }
        if events.isEmpty {
            print("no removals, quarantines or evictions" + (since != nil ? " since \(since!)" : "") + (cause.map { " with cause \($0)" } ?? ""))
            return
        }
        for line in Self.lines(events) { print(line) }
    }

    struct HistoryJSON: Encodable { var events: [HistoryEvent] }

    /// One line per event, shared with `status -v`.
    static func lines(_ events: [HistoryEvent]) -> [String] {
        let f = ISO8601DateFormatter()
        return events.map { e in
            var line = f.string(from: Date(timeIntervalSince1970: e.at)) + "  " + Output.pad(e.action.rawValue, 15) + Output.pad(e.cause.rawValue, 13)
                + e.file + "  " + Output.bytes(e.bytes)
            if let region = e.region { line += "  \(region): \(e.detail ?? "")" } else if let d = e.detail { line += "  (\(d))" }
            if let x = e.expectedCrc, let a = e.actualCrc { line += " (expected \(Output.crc(x)), actual \(Output.crc(a)))" }
            if let to = e.destination { line += "  -> \(to)" }
            return line
        }
    }

    /// "30m", "12h", "7d", "90s", or an ISO 8601 date or date-time (UTC when no zone is given).
    static func parseSince(_ s: String, now: Double) -> Double? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800]
        if let u = s.last, let mult = units[u], let n = Double(s.dropLast()), n >= 0 { return now - n * mult }
        let full = ISO8601DateFormatter()
        if let d = full.date(from: s) { return d.timeIntervalSince1970 }
        let day = ISO8601DateFormatter()
        day.formatOptions = [.withFullDate]
        if let d = day.date(from: s) { return d.timeIntervalSince1970 }
        return nil
    }
}
