import ArgumentParser
import Foundation
import KVScrubControl

/// `kvscrubd metrics`: the Prometheus text exposition, over the socket.
struct MetricsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics",
        abstract: "Print the daemon's metrics in the Prometheus text format (the same as its optional HTTP /metrics).",
        discussion: "Exit status: 0 success; 1 the daemon refused the request; 2 the daemon could not be reached.")

    @OptionGroup var options: SocketOptions

    func run() throws {
        let text = try options.send(ControlRequest(cmd: "metrics")).metrics ?? ""
        if options.json { options.printJSON(["metrics": text]) } else { print(text, terminator: "") }
    }
}

/// `kvscrubd explain SHA`: why a checkpoint stands where it does in the eviction order.
struct ExplainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "Explain a checkpoint's place in the eviction order: its score, the parts of it, its rank, and the budget.",
        discussion: "SHA is the file's name, with or without .kv, or a unique prefix of at least 4 hex digits.\nExit status: 0 success; 1 no such checkpoint (or refused); 2 the daemon could not be reached.")

    @OptionGroup var options: SocketOptions
    @Argument(help: ArgumentHelp("The checkpoint.", valueName: "sha"))
    var sha: String

    func run() throws {
        guard let x = try options.send(ControlRequest(cmd: "explain", name: sha)).explanation else { throw ExitCode(1) }
        if options.json { options.printJSON(x); return }
        let e = x.entry
        print("\(e.name): rank \(e.rank) of \(x.files), score " + String(format: "%.6g", e.score) + ", \(Output.bytes(e.size))")
        for r in x.reasons { print("  - " + r) }
    }
}

/// `kvscrubd reload`: re-read the configuration file, like SIGHUP, with the outcome reported.
struct ReloadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract: "Re-read the configuration file (as SIGHUP does) and say whether it was taken.",
        discussion: "Needs root, the daemon's user, or admin_group.\nExit status: 0 reloaded; 1 refused, or the file did not load (the previous settings stay); 2 the daemon could not be reached.")

    @OptionGroup var options: SocketOptions

    func run() throws { try ScrubCommand.simple("reload", options) }
}

/// `kvscrubd evict-now`: evaluate the budget and free space at once instead of at the next timer.
struct EvictNowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evict-now",
        abstract: "Have the daemon evaluate its budget and free-space floor now, and report what it evicted.",
        discussion: "Needs root, the daemon's user, or admin_group.\nExit status: 0 success; 1 refused; 2 the daemon could not be reached.")

    @OptionGroup var options: SocketOptions

    func run() throws { try ScrubCommand.simple("evict-now", options) }
}
