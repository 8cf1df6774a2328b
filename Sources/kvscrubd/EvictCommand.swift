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
            inode that was scored. Only <sha>.kv files directly in DIR are ever considered. ds4-agent's saved sessions
            (a title, reason agent-system or agent-session, sysprompt.kv) are a user's, never victims. First, the files of
            a superseded engine generation go, oldest first: one the engine in force has written after, with nothing
            created or restored for --superseded-grace-hours (never an unknown layout or an agent session).
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

    @Option(name: .customLong("superseded-grace-hours"), help: ArgumentHelp(
        "Reclaim a superseded generation's files once nothing of it was created or restored for this long (superseded_grace_hours; default 24; off).",
        valueName: "h|off"))
    var supersededGrace: String = "24"

    @Argument(help: "The cache directory.")
    var dir: String

    var graceSeconds: Double? { supersededGrace == "off" ? nil : Double(supersededGrace).map { $0 * 3600 } }

    func validate() throws {
        guard supersededGrace == "off" || (Double(supersededGrace).map { $0 >= 0 && $0.isFinite } ?? false) else {
            throw ValidationError("--superseded-grace-hours must be a number of hours or off, not '\(supersededGrace)'")
        }
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
        let superseded = GenerationCensus.reclaimable(entries: scan.entries, engine: scan.engineABI.generation,
                                                       graceSeconds: graceSeconds, now: Double(at))
        let reclaimed = Set(superseded.map(\.fileName))
        // Agent sessions count towards the total but are never victims.
        let pool = scan.entries.filter { !reclaimed.contains($0.fileName) }
        let sessionBytes = pool.filter(\.isAgentSession).reduce(0) { $0 + $1.fileSize }
        let scoredBudget = budget > sessionBytes ? budget - sessionBytes : 0
        let plan = EvictionPlan.make(entries: pool.filter { $0.fileSize <= budget && !$0.isAgentSession }, budgetBytes: scoredBudget, now: at)
        var victims: [VictimJSON] = []
        var failed = false
        let all = superseded.map { (entry: $0, score: 0.0, superseded: true) } + plan.victims.map { (entry: $0.entry, score: $0.score, superseded: false) }
        for v in all {
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
                                      unusable: v.entry.unusable, outcome: outcome,
                                      cause: v.superseded ? "superseded" : (v.entry.unusable != nil ? "incompatible" : "budget")))
        }
        let total = scan.entries.reduce(0) { $0 + $1.fileSize }
        let remaining = total - victims.reduce(0) { $0 + $1.size }
        let report = ReportJSON(dir: dir, budget_bytes: budgetMB << 20, total_bytes: total,
                                remaining_bytes: remaining, dry_run: dryRun, victims: victims, engine_abi: scan.engineABI)
        if json {
            print(Output.json(report))
        } else {
            print("\(dir): \(Output.bytes(total)) in \(scan.entries.count) checkpoints, budget \(Output.bytes(budgetMB << 20)); engine generation \(scan.engineABI.description)")
            for v in victims {
                let why = v.cause == "superseded" ? "superseded generation" : "score " + String(format: "%.6g", v.score)
                print("  " + Output.pad(v.outcome, 10) + " " + v.name + "  " + why +
                      "  " + Output.bytes(v.size) + (v.unusable.map { "  (unusable: \($0))" } ?? ""))
            }
            let verb = dryRun ? "would free" : "freed"
            print(victims.isEmpty ? "under budget and no superseded generation: nothing to evict" :
                    "\(victims.count) victims, \(verb) \(Output.bytes(total - remaining)); \(Output.bytes(remaining)) remain")
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
        /// budget, incompatible, or superseded (a superseded generation, whatever the budget).
        var cause: String
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
