import ArgumentParser
import Foundation
import KVCFormat

struct EvictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evict",
        abstract: "Remove the lowest-scoring checkpoints until a directory is under a byte budget.",
        discussion: """
            Victims are chosen exactly as ds4's engine chooses them: lowest eviction score first, older last_used
            first on equal scores, then by name. Files the engine cannot use (another payload ABI than --engine-abi,
            an unknown version, an unreadable header or file, shorter than its header says) score 0 and go first.
            A checkpoint larger than the whole budget is left out of the sum and evicts nothing else. Each victim is removed only if its name still names the
            inode that was scored. Only <sha>.kv files directly in DIR are ever considered.
            Exit status: 0 success (under budget, or --dry-run); 2 usage or I/O error.
            """)

    @Option(name: .customLong("budget-mb"), help: ArgumentHelp("Byte budget in MiB (ds4's --kv-disk-space-mb).", valueName: "MiB"))
    var budgetMB: UInt64

    @Flag(name: .customLong("dry-run"), help: "Print the victims; remove nothing.")
    var dryRun = false

    @Option(name: .long, help: ArgumentHelp("Score at this time (Unix seconds) instead of now.", valueName: "unix"))
    var now: UInt64?

    @Flag(name: .long, help: "Print one JSON object instead of text.")
    var json = false

    @OptionGroup var abi: EngineABIOption

    @Argument(help: "The cache directory.")
    var dir: String

    func validate() throws {
        guard budgetMB > 0 else { throw ValidationError("--budget-mb must be at least 1") }
        guard budgetMB <= UInt64.max / (1 << 20) else { throw ValidationError("--budget-mb is too large") }
    }

    func run() throws {
        let at = now ?? Output.now()
        let directory: CacheDirectory
        let scan: CacheDirectory.Scan
        do {
            directory = try CacheDirectory(path: dir)
            scan = try directory.scan(engineABI: abi.setting)
        } catch {
            Output.error("\(error)")
            throw ExitCode(2)
        }
        for e in scan.errors { Output.error("\(e) (unreadable: counted with its size, evicted first)") }
        let budget = budgetMB << 20
        let plan = EvictionPlan.make(entries: scan.entries.filter { $0.fileSize <= budget }, budgetBytes: budget, now: at)
        var victims: [VictimJSON] = []
        var failed = false
        for v in plan.victims {
            var outcome = dryRun ? "planned" : ""
            if !dryRun {
                do {
                    switch try directory.remove(name: v.entry.fileName, identity: v.entry.identity) {
                    case .removed: outcome = "removed"
                    case .vanished: outcome = "vanished"
                    case .replaced: outcome = "replaced (left alone)"
                    }
                } catch {
                    outcome = "error: \(error)"
                    failed = true
                }
            }
            victims.append(VictimJSON(name: v.entry.fileName, path: directory.pathOf(v.entry.fileName), score: v.score,
                                      size: v.entry.fileSize, last_used: v.entry.header?.lastUsed,
                                      unusable: v.entry.unusable, outcome: outcome))
        }
        let report = ReportJSON(dir: dir, budget_bytes: budgetMB << 20, total_bytes: plan.totalBytes,
                                remaining_bytes: plan.remainingBytes, dry_run: dryRun, victims: victims, engine_abi: scan.engineABI)
        if json {
            print(Output.json(report))
        } else {
            print("\(dir): \(Output.bytes(plan.totalBytes)) in \(scan.entries.count) checkpoints, budget \(Output.bytes(budgetMB << 20)); engine payload ABI \(scan.engineABI.description)")
            for v in victims {
                print("  " + Output.pad(v.outcome, 10) + " " + v.name + "  score " + String(format: "%.6g", v.score) +
                      "  " + Output.bytes(v.size) + (v.unusable.map { "  (unusable: \($0))" } ?? ""))
            }
            let verb = dryRun ? "would free" : "freed"
            print(victims.isEmpty ? "under budget: nothing to evict" :
                    "\(victims.count) victims, \(verb) \(Output.bytes(plan.totalBytes - plan.remainingBytes)); \(Output.bytes(plan.remainingBytes)) remain")
        }
        if failed { throw ExitCode(2) }
    }

    struct VictimJSON: Encodable {
        var name: String
        var path: String
        var score: Double
        var size: UInt64
        var last_used: UInt64?
        var unusable: String?
        var outcome: String
    }

    struct ReportJSON: Encodable {
        var dir: String
        var budget_bytes: UInt64
        var total_bytes: UInt64
        var remaining_bytes: UInt64
        var dry_run: Bool
        var victims: [VictimJSON]
        var engine_abi: EngineABI.Resolution
    }
}
