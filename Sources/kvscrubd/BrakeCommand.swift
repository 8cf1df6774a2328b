import ArgumentParser
import Foundation
import KVScrubDaemon

/// `kvscrubd brake status|release`: the removal brake (see `RemovalBrake`).
struct BrakeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "brake",
        abstract: "Show or release the removal brake, which stops removing corrupt files when too many are found at once.",
        discussion: """
            When more files are proven corrupt in an hour than removal_brake allows (default: 5 files or 5% of the
            files verified in that hour, whichever is larger), the daemon stops removing them: further corrupt files
            are moved to the quarantine directory under the state directory (or stay where they are if that fails).
            Mass "damage" usually means a format or engine-version mismatch or a failing disk, not independent rot:
            look at the quarantined files (kvscrubd verify) before releasing the brake.
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
            abstract: "Release the brake: proven-corrupt files are removed again. Quarantined files stay where they are.",
            discussion: "Needs root, the daemon's user, or admin_group.\nExit status: 0 success; 1 refused; 2 the daemon could not be reached.")
        @OptionGroup var options: SocketOptions
        func run() throws { try ScrubCommand.simple("brake-release", options) }
    }
}
