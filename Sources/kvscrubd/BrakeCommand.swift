import ArgumentParser
import Foundation
import KVScrubControl

/// `kvscrubd brake status|release`: the removal brake (see `RemovalBrake`).
struct BrakeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "brake",
        abstract: "Show or release the removal brake, which stops removing corrupt files when too many are found at once.",
        discussion: """
            When more files are proven corrupt in an hour than removal_brake allows (default: 5 files or 5% of the
            files verified in that hour, whichever is larger), the daemon stops removing them: further corrupt files
            stay where they are (removal_brake_action: keep, the default), or, if the operator chose
            removal_brake_action: quarantine, are moved to the quarantine directory under the state directory.
            Mass "damage" usually means a format or engine-generation mismatch or a failing disk, not independent
            rot: look at the files (kvscrubd verify) before releasing the brake.
            """,
        subcommands: [Status.self, Release.self],
        defaultSubcommand: Status.self)

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show whether the brake is engaged, why, and the last hour's counts.",
            discussion: "Exit status: 0 not engaged; 1 engaged (or refused); 2 the daemon could not be reached.")
        @OptionGroup var options: SocketOptions
        func run() throws {
            guard let b = try options.send(ControlRequest(cmd: "status")).status?.brake else { throw ExitCode(2) }
            if options.json { options.printJSON(b) } else {
                for line in StatusText.brakeLines(b) { print(line) }
            }
            if b.engaged { throw ExitCode(1) }
        }
    }

    struct Release: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Release the brake: proven-corrupt files are removed again. Quarantined files stay there unless --restore.",
            discussion: """
                With --restore, the files the brake moved to its quarantine are put back where they came from, each \
                only if its name in the cache is free (never over a file the engine stored since); the daemon then \
                verifies them again as new arrivals. Fix what made the verdicts wrong first (engine_payload_abi, \
                engine_payload_version), or they are judged the same way again.
                Needs root, the daemon's user, or admin_group.
                Exit status: 0 success; 1 refused; 2 the daemon could not be reached.
                """)
        @OptionGroup var options: SocketOptions
        @Flag(name: .long, help: "Put the files the brake quarantined back in the cache where their names are free.")
        var restore = false
        func run() throws {
            guard restore else { return try ScrubCommand.simple("brake-release", options) }
            let r = try options.send(ControlRequest(cmd: "brake-restore"))
            if options.json { return options.printJSON(r) }
            print(r.message ?? "ok")
            for f in r.outcome?.leftInQuarantine ?? [] { print("  left: \(f)") }
        }
    }
}
