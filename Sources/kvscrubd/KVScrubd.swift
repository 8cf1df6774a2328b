import ArgumentParser
import Foundation

/// `kvscrubd`: the daemon and its offline tools. This file only wires the
/// subcommands and the exit-code contract; each subcommand lives in its own file.
struct KVScrubd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvscrubd",
        abstract: "Maintain an on-disk LLM KV checkpoint cache (ds4 KVC files): run the daemon, ask it, verify, inspect, evict.",
        discussion: """
            Checkpoints are files named <sha1-of-text>.kv in the KVC format (v1, or v2 with CRC32C; see kvc(5)).
            Exit status: 0 success; 1 something was found corrupt (verify); 2 usage or I/O error.
            """,
        version: KVScrubdVersion.string,
        subcommands: [RunCommand.self, StatusCommand.self, EntriesCommand.self, ExplainCommand.self, ScrubCommand.self, BrakeCommand.self, MetricsCommand.self,
                      ReloadCommand.self, EvictNowCommand.self, HistoryCommand.self, VerifyCommand.self, InspectCommand.self, EvictCommand.self]
    )
}

enum KVScrubdVersion {
    static let string = "0.1.0"
}

@main
enum Main {
    static func main() async {
        do {
            var command = try KVScrubd.parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            // The tools promise 2 for usage errors (scripts depend on it); ArgumentParser says 64.
            if KVScrubd.exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data((KVScrubd.fullMessage(for: error) + "\n").utf8))
                exit(2)
            }
            KVScrubd.exit(withError: error)
        }
    }
}
