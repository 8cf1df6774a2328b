import ArgumentParser
import Foundation
import KVScrubControl

/// `kvscrubd scrub ...`: control the running daemon's scrub over the socket.
struct ScrubCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scrub",
        abstract: "Control the daemon's scrub: start, wait for, pause, resume, cancel a pass; show its status; verify files now.",
        discussion: """
            start, pause, resume, cancel and now change the daemon's work: they need root, the daemon's user, or \
            membership of admin_group. status is open to anyone who can connect.
            Exit status: 0 success; 1 the daemon refused the request (or, for now and for wait, a file is corrupt); 2 the daemon could not \
            be reached; 3 (wait) the pass was cancelled.
            """,
        subcommands: [Start.self, Wait.self, Pause.self, Resume.self, Cancel.self, Status.self, Now.self]
    )

    /// One request; a sentence back, or with --json the reply as data (its `outcome`: the scrub,
    /// brake, eviction or reload it left behind).
    static func simple(_ cmd: String, _ options: SocketOptions) throws {
        let r = try options.send(ControlRequest(cmd: cmd))
        if options.json { options.printJSON(r) } else { print(r.message ?? "ok") }
    }

    struct Start: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a scrub pass now (refused while one runs; lifts a pause).",
            discussion: "With --wait, as 'scrub wait' after it, including the second looks at what the pass found: exit status 1 if one confirmed a corrupt file, 3 if the pass was cancelled.")
        @OptionGroup var options: SocketOptions
        @Flag(name: [.short, .long], help: "Wait for the pass to end, showing its progress (as 'zpool scrub -w').")
        var wait = false

        func run() throws {
            guard wait else { return try ScrubCommand.simple("scrub-start", options) }
            let r = try options.send(ControlRequest(cmd: "scrub-start"))
            if !options.json { print(r.message ?? "scrub pass started") }
            try ScrubWait(options: options).run(pass: r.outcome?.scrub?.passStartedAt)
        }
    }

    struct Wait: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Wait for the scrub pass in progress to end, showing its progress; return at once if none runs.",
            discussion: """
                On a terminal, one progress line updated in place; otherwise a plain line at every tenth of the pass and when it \
                pauses or resumes. With --json, one JSON object when it ends. A file the pass found corrupt is removed after a \
                second look once it has settled, which can come after the pass: the wait includes those looks.
                Exit status: 0 the pass completed with nothing confirmed corrupt (or no pass was running); 1 a second look \
                confirmed a corrupt file (or the request was refused); 2 the daemon could not be reached; 3 the pass was \
                cancelled before it ended.
                """)
        @OptionGroup var options: SocketOptions
        func run() throws {
            guard let sc = try options.send(ControlRequest(cmd: "scrub-status")).scrub else { throw ExitCode(2) }
            try ScrubWait(options: options).run(pass: sc.active ? sc.passStartedAt : nil)
        }
    }

    struct Pause: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Pause all scrub I/O at once, mid-file; survives a daemon restart.")
        @OptionGroup var options: SocketOptions
        func run() throws { try ScrubCommand.simple("scrub-pause", options) }
    }

    struct Resume: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Resume a paused scrub where it stopped.")
        @OptionGroup var options: SocketOptions
        func run() throws { try ScrubCommand.simple("scrub-resume", options) }
    }

    struct Cancel: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "End the running pass unfinished; the next is due one scrub interval later.")
        @OptionGroup var options: SocketOptions
        func run() throws { try ScrubCommand.simple("scrub-cancel", options) }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the pass in progress (files and bytes done, rate, limit, ETA without paused time) and the last completed pass.")
        @OptionGroup var options: SocketOptions
        func run() throws {
            guard let sc = try options.send(ControlRequest(cmd: "scrub-status")).scrub else { throw ExitCode(2) }
            if options.json { options.printJSON(sc); return }
            var lines: [String] = []
            StatusText.scrubRows(sc) { k, v in lines.append(Output.pad(k + ":", 11) + v) }
            print(lines.joined(separator: "\n"))
        }
    }

    struct Now: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify the named checkpoints at once (unthrottled) and report the verdicts; corrupt ones are removed as the scrub would.",
            discussion: "FILE is <sha>.kv, a bare sha, or a path in the cache directory.")
        @OptionGroup var options: SocketOptions
        @Argument(help: ArgumentHelp("Checkpoints to verify.", valueName: "file"))
        var files: [String]

        func validate() throws {
            if files.isEmpty { throw ValidationError("name at least one file") }
        }

        func run() throws {
            let absolute = files.map { $0.contains("/") && !$0.hasPrefix("/") ? FileManager.default.currentDirectoryPath + "/" + $0 : $0 }
            let verdicts = try options.send(ControlRequest(cmd: "scrub-now", files: absolute), timeout: 86400).verdicts ?? []
            if options.json {
                options.printJSON(["files": verdicts])
            } else {
                print(Output.pad("VERDICT", 13) + Output.pad("ACTION", 12) + "FILE")
                for v in verdicts {
                    let did = v.disposition?.rawValue ?? v.action.split(separator: " ").first.map(String.init) ?? v.action
                    print(Output.pad(v.verdict.rawValue, 13) + Output.pad(did, 12) + v.file)
                    for p in v.problems { print("    " + p) }
                    if v.action != did { print("    action: " + v.action) }
                }
            }
            if verdicts.contains(where: { $0.verdict == .corrupt }) { throw ExitCode(1) }
            if verdicts.contains(where: { [.missing, .unreadable, .ignored].contains($0.verdict) }) { throw ExitCode(2) }
        }
    }
}
