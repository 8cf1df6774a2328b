import ArgumentParser
import Foundation
import KVCFormat
import KVCSimulation

/// `kvc-engine-sim`: plays ds4's engine against a cache directory, through
/// the format module only, for tests, demos and benchmarks.
@main
struct EngineSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-engine-sim",
        abstract: "Write and use a KVC checkpoint cache the way ds4's engine does (a test and demo stand-in).",
        subcommands: [StoreCommand.self, LoadCommand.self, TouchCommand.self, ToolMapCommand.self, RunCommand.self, ChurnCommand.self]
    )
}

struct EngineFlags: ParsableArguments {
    @Option(name: .long, help: "Cache directory.")
    var dir: String

    @Option(name: .long, help: "File format to write: v1 (today's engine) or v2 (CRC32C).")
    var format: String = "v2"

    @Option(name: .customLong("model-id"), help: "Engine model identifier.")
    var modelID: UInt8 = 1

    @Option(name: .customLong("quant-bits"), help: "Routed-expert quantization (2 or 4).")
    var quantBits: UInt8 = 4

    @Option(name: .customLong("ctx-size"), help: "Context size the engine runs with.")
    var ctxSize: UInt32 = 32768

    @Option(name: .long, help: ArgumentHelp(
        "Engine generation to play: pr146 (upstream ds4 with PR #146: header bytes 7 and 20 are 0, a v2 file that fails a load is unlinked) or kvstore (the shared kvstore: model id and payload ABI 2, other ABIs refused). Default: pr146 for v2, kvstore for v1.",
        valueName: "pr146|kvstore"))
    var generation: String?

    @Option(name: .customLong("step-pause-ms"), help: "Pause this many milliseconds between the steps of a tool-map rewrite (truncate, write, header), to widen the window a checker can see.")
    var stepPauseMS: Double = 0

    var engine: EngineGeneration {
        get throws {
            guard let generation else { return .writing(version: try version) }
            guard let g = EngineGeneration(rawValue: generation) else { throw ValidationError("--generation must be pr146 or kvstore, not \(generation)") }
            return g
        }
    }

    /// In-place updates as the engine makes them: no lock, the generation's ABI rule, the pause.
    var updater: CheckpointUpdater {
        get throws {
            var u = CheckpointUpdater(engineABI: try engine.requiredABI)
            u.pauseBetweenSteps = .milliseconds(Int64(stepPauseMS))
            return u
        }
    }

    var version: UInt8 {
        get throws {
            switch format {
            case "v1", "1": return 1
            case "v2", "2": return 2
            default: throw ValidationError("--format must be v1 or v2, not \(format)")
            }
        }
    }
}

func now() -> UInt64 { UInt64(Date().timeIntervalSince1970) }

func printJSON<T: Encodable>(_ v: T) {
    let enc = JSONEncoder()
    enc.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
    print(String(decoding: (try? enc.encode(v)) ?? Data(), as: UTF8.self))
}

func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data(("kvc-engine-sim: " + message + "\n").utf8))
    return ExitCode(1)
}

struct StoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store", abstract: "Store one checkpoint (atomically: temporary file, then rename); prints its path.")

    @OptionGroup var engine: EngineFlags

    @Option(name: .customLong("text-file"), help: "Read the checkpoint text from this file.")
    var textFile: String?

    @Option(name: .customLong("text-bytes"), help: "Generate this many bytes of text instead (seeded).")
    var textBytes: Int = 4096

    @Option(name: .customLong("payload-bytes"), help: "Size of the synthetic DSV4 payload.")
    var payloadBytes: UInt64 = 1 << 20

    @Option(name: .long, help: "Reason: cold, continued, evict, shutdown, agent-system, agent-session, unknown.")
    var reason: String = "cold"

    @Option(name: .long, help: "Token count (default: text bytes / 4, capped by the payload size).")
    var tokens: UInt32?

    @Option(name: .long, help: "Hit count to store.")
    var hits: UInt32 = 0

    @Option(name: .customLong("created-at"), help: "created_at (Unix seconds; default now).")
    var createdAt: UInt64?

    @Option(name: .customLong("last-used"), help: "last_used (Unix seconds; default created_at).")
    var lastUsed: UInt64?

    @Option(name: .customLong("tool-map"), help: "Attach a tool map with this many entries.")
    var toolMapEntries: Int = 0

    @Option(name: .long, help: "Seed for generated text and payload.")
    var seed: UInt64 = 1

    func run() throws {
        guard let r = KVCReason(name: reason) else { throw fail("unknown reason \(reason)") }
        guard payloadBytes >= SyntheticPayload.minimumBytes else {
            throw fail("--payload-bytes must be at least \(SyntheticPayload.minimumBytes) (prefix, one token, logits)")
        }
        var text: [UInt8]
        if let textFile {
            guard let d = FileManager.default.contents(atPath: textFile) else { throw fail("cannot read \(textFile)") }
            text = Array(d)
        } else {
            var rng = SplitMix64(seed: seed)
            text = Array("<|begin|>generated text \(seed) ".utf8)
            while text.count < textBytes { text.append(UInt8(ascii: "a") + UInt8(rng.next() % 26)) }
            text = Array(text.prefix(textBytes))
        }
        let maxTokens = SyntheticPayload.maxTokens(payloadBytes: payloadBytes)
        let t = tokens ?? max(1, min(UInt32(text.count / 4), maxTokens))
        guard t >= 1, t <= maxTokens else { throw fail("--tokens \(t) does not fit a \(payloadBytes)-byte payload (at most \(maxTokens))") }
        let created = createdAt ?? now()
        let gen = try engine.engine
        var meta = CheckpointWriter.Metadata(reason: r, modelID: gen.modelByte(engine.modelID), quantBits: engine.quantBits,
                                             ctxSize: engine.ctxSize, tokens: t, createdAt: created, lastUsed: lastUsed)
        meta.hits = hits
        meta.payloadABI = gen.payloadABI
        let map: ToolMap? = toolMapEntries > 0 ? ToolMap((0..<toolMapEntries).map {
            ToolMap.Entry(id: "call_\(seed)_\($0)", dsml: "<|DSML|invoke name=\"t\($0)\"></|DSML|invoke>")
        }) : nil
        do {
            let path = try CheckpointWriter(version: try engine.version).store(
                in: engine.dir, text: text,
                payload: SyntheticPayload(byteCount: payloadBytes, tokens: t, ctxSize: engine.ctxSize, seed: seed, version: gen.payloadVersion),
                metadata: meta, toolMap: map)
            print(path)
        } catch let e as KVCError {
            throw fail("\(e)")
        }
    }
}

struct LoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Find the longest stored prefix of a prompt, load it verified, and touch it; prints JSON.",
        discussion: "Exit status: 0 hit or miss; 1 the checkpoint found was corrupt or incompatible (refused) or an error.")

    @OptionGroup var engine: EngineFlags

    @Option(name: .customLong("prompt-file"), help: "Read the prompt from this file.")
    var promptFile: String?

    @Option(name: .long, help: "The prompt text.")
    var prompt: String?

    @Flag(name: .customLong("no-touch"), help: "Do not update hits and last_used on a hit.")
    var noTouch = false

    struct Result: Encodable {
        var hit: Bool
        var path: String?
        var tokens: UInt32?
        var text_bytes: UInt32?
        var checksums: String?
    }

    func run() throws {
        let bytes: [UInt8]
        if let promptFile {
            guard let d = FileManager.default.contents(atPath: promptFile) else { throw fail("cannot read \(promptFile)") }
            bytes = Array(d)
        } else if let prompt {
            bytes = Array(prompt.utf8)
        } else {
            throw ValidationError("give --prompt or --prompt-file")
        }
        let gen = try engine.engine
        var loader = CheckpointLoader()
        loader.verifierOptions.engine = gen.generation
        do {
            let compat = CheckpointLoader.Compatibility(modelID: gen.modelByte(engine.modelID), quantBits: engine.quantBits,
                                                        ctxSize: engine.ctxSize, engine: gen.generation)
            guard let e = try loader.findTextPrefix(in: engine.dir, prompt: bytes, compatibility: compat) else {
                printJSON(Result(hit: false))
                return
            }
            let path = engine.dir + "/" + e.fileName
            let loaded: CheckpointLoader.Loaded
            do { loaded = try loader.load(path: path) } catch let err as KVCError where err.kind == .corrupt {
                // PR #146: a v2 file that fails its checks on load is unlinked (and stored afresh later).
                if gen.unlinksOnCorruptLoad(version: e.header?.version) { _ = unlink(path) }
                throw err
            }
            if !noTouch { try engine.updater.touch(path: path, now: now()) }
            printJSON(Result(hit: true, path: path, tokens: loaded.header.tokens, text_bytes: loaded.header.textBytes,
                             checksums: loaded.checksums.rawValue))
        } catch let e as KVCError {
            throw fail("\(e)")
        }
    }
}

struct TouchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "touch", abstract: "Record a hit on a checkpoint (hits, last_used) with one write of the header, as the engine does (no lock).")

    @Option(name: .long, help: ArgumentHelp("Engine generation: pr146 (any payload ABI) or kvstore (refuses ABIs other than 2).", valueName: "pr146|kvstore"))
    var generation: String = "pr146"

    @Option(name: .long, help: "Set hits to this value (default: one more).")
    var hits: UInt32?

    @Option(name: .customLong("now"), help: "last_used to write (Unix seconds; default now).")
    var at: UInt64?

    @Argument(help: "Checkpoint file.")
    var path: String

    func run() throws {
        do {
            guard let g = EngineGeneration(rawValue: generation) else { throw ValidationError("--generation must be pr146 or kvstore") }
            let h = try CheckpointUpdater(engineABI: g.requiredABI).touch(path: path, hits: hits, now: at ?? now())
            print("\(path): hits \(h.hits), last_used \(h.lastUsed)")
        } catch let e as KVCError { throw fail("\(e)") }
    }
}

struct ToolMapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "toolmap",
        abstract: "Rewrite a checkpoint's tool-map trailer as the engine does: truncate at the payload end, write the map, rewrite the header (no lock).")

    @Option(name: .long, help: "Number of entries in the new map (0: an empty map; the file then ends at the payload and ext bit 0 is cleared).")
    var entries: Int = 2

    @Option(name: .long, help: ArgumentHelp("Engine generation: pr146 (any payload ABI) or kvstore (refuses ABIs other than 2).", valueName: "pr146|kvstore"))
    var generation: String = "pr146"

    @Option(name: .customLong("step-pause-ms"), help: "Pause this many milliseconds between the steps.")
    var stepPauseMS: Double = 0

    @Option(name: .customLong("kill-at"), help: ArgumentHelp("Die by SIGKILL right after this step, as an engine crash there would: truncated (file cut at the payload's end) or trailerWritten (new map written, header not yet).", valueName: "step"))
    var killAt: String?

    @Option(name: .long, help: "Seed for the entries.")
    var seed: UInt64 = 1

    @Argument(help: "Checkpoint file.")
    var path: String

    func run() throws {
        guard entries >= 0 else { throw ValidationError("--entries must be 0 or more") }
        guard let g = EngineGeneration(rawValue: generation) else { throw ValidationError("--generation must be pr146 or kvstore") }
        let map = ToolMap((0..<entries).map { ToolMap.Entry(id: "call_\(seed)_\($0)", dsml: "<|DSML|invoke name=\"t\($0)\"></|DSML|invoke>") })
        do {
            var u = CheckpointUpdater(engineABI: g.requiredABI)
            u.pauseBetweenSteps = .milliseconds(Int64(stepPauseMS))
            if let killAt {
                guard CheckpointUpdater.Step(rawValue: killAt) != nil else { throw ValidationError("--kill-at must be truncated or trailerWritten") }
                u.onStep = { step in if step.rawValue == killAt { kill(getpid(), SIGKILL) } }
            }
            try u.rewriteToolMap(path: path, toolMap: map, now: now())
            print("\(path): tool map of \(entries) entries")
        } catch let e as KVCError { throw fail("\(e)") }
    }
}

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a seeded engine workload: cold/continued/evict/shutdown stores, verified loads with touches, tool-map rewrites.",
        discussion: "Prints a JSON summary at the end. With --log, every operation is appended to a JSON-lines file.")

    @OptionGroup var engine: EngineFlags

    @Option(name: .long, help: "How long to run, in seconds.")
    var duration: Double = 10

    @Option(name: .long, help: "Operations per second (0: as fast as possible).")
    var rate: Double = 20

    @Option(name: .long, help: "Stop after this many operations.")
    var operations: Int?

    @Option(name: .customLong("payload-bytes"), help: "Payload size of each stored checkpoint.")
    var payloadBytes: UInt64 = 256 << 10

    @Option(name: .long, help: "Workload seed.")
    var seed: UInt64 = 1

    @Option(name: .long, help: "Number of concurrent conversations.")
    var conversations: Int = 8

    @Option(name: .customLong("engine-budget-mb"), help: "Also evict like the engine to this budget before each store.")
    var engineBudgetMB: UInt64?

    @Option(name: .long, help: "Append one JSON line per operation to this file.")
    var log: String?

    func run() throws {
        guard payloadBytes >= SyntheticPayload.minimumBytes else {
            throw ValidationError("--payload-bytes must be at least \(SyntheticPayload.minimumBytes)")
        }
        guard conversations >= 1 else { throw ValidationError("--conversations must be at least 1") }
        var o = EngineWorkload.Options(directory: engine.dir)
        o.seed = seed
        o.duration = .milliseconds(Int64(duration * 1000))
        o.rate = rate
        o.maxOperations = operations
        o.payloadBytes = payloadBytes
        o.version = try engine.version
        o.generation = try engine.engine
        o.stepPause = .milliseconds(Int64(engine.stepPauseMS))
        o.conversations = conversations
        o.engineBudgetMB = engineBudgetMB
        o.modelID = engine.modelID
        o.quantBits = engine.quantBits
        o.ctxSize = engine.ctxSize
        let sink = log.flatMap { p -> FileHandle? in
            if !FileManager.default.fileExists(atPath: p) { _ = FileManager.default.createFile(atPath: p, contents: nil) }
            let h = FileHandle(forWritingAtPath: p)
            h?.seekToEndOfFile()
            return h
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        var workload = EngineWorkload(options: o) { event in
            guard let sink, let d = try? enc.encode(event) else { return }
            sink.write(d + Data("\n".utf8))
        }
        let summary = workload.run()
        printJSON(summary)
    }
}

struct ChurnCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "churn",
        abstract: "Rewrite checkpoints in place as the engine does, as fast as asked: touches (one header write) and tool-map rewrites (truncate, write, header), no lock. Prints a JSON summary.",
        discussion: "Each step picks one of FILE at random (seeded). A file that vanished is skipped; a file the engine would refuse (damaged v2 header, other ABI) is counted and left alone, as the engine would.")

    @Option(name: .long, help: "How long to run, in seconds.")
    var duration: Double = 10

    @Option(name: .long, help: "Stop after this many rewrites.")
    var operations: Int?

    @Option(name: .customLong("step-pause-ms"), help: "Pause this many milliseconds between the steps of a tool-map rewrite.")
    var stepPauseMS: Double = 0

    @Option(name: .customLong("idle-ms"), help: "Pause this many milliseconds between rewrites.")
    var idleMS: Double = 0

    @Option(name: .customLong("toolmap-share"), help: "Share of rewrites that are tool-map rewrites (the rest are touches).")
    var toolMapShare: Double = 0.5

    @Option(name: .long, help: ArgumentHelp("Engine generation: pr146 (any payload ABI) or kvstore (refuses ABIs other than 2).", valueName: "pr146|kvstore"))
    var generation: String = "pr146"

    @Option(name: .long, help: "Seed.")
    var seed: UInt64 = 1

    @Argument(help: "Checkpoint files to rewrite.")
    var files: [String]

    struct Summary: Encodable {
        var touches = 0
        var toolmaps = 0
        var vanished = 0
        var refused = 0
        var errors: [String] = []
        /// In-place rewrites done, by file path.
        var perFile: [String: Int] = [:]
    }

    func run() throws {
        guard !files.isEmpty else { throw ValidationError("give at least one FILE") }
        guard let g = EngineGeneration(rawValue: generation) else { throw ValidationError("--generation must be pr146 or kvstore") }
        var u = CheckpointUpdater(engineABI: g.requiredABI)
        u.pauseBetweenSteps = .milliseconds(Int64(stepPauseMS))
        var rng = SplitMix64(seed: seed)
        var s = Summary()
        let clock = ContinuousClock()
        let end = clock.now + .milliseconds(Int64(duration * 1000))
        var n: UInt64 = 0
        while clock.now < end && (operations.map { s.touches + s.toolmaps < $0 } ?? true) {
            n += 1
            let path = files[Int(rng.next() % UInt64(files.count))]
            do {
                if Double(rng.next() % 1000) / 1000 < toolMapShare {
                    let count = Int(rng.next() % 4)
                    let map = ToolMap((0..<count).map { ToolMap.Entry(id: "call_\(n)_\($0)", dsml: String(repeating: "x", count: Int(rng.next() % 300))) })
                    try u.rewriteToolMap(path: path, toolMap: map, now: now())
                    s.toolmaps += 1
                } else {
                    try u.touch(path: path, now: now())
                    s.touches += 1
                }
                s.perFile[path, default: 0] += 1
            } catch let e as KVCError where e.errno == .noSuchFileOrDirectory {
                s.vanished += 1
            } catch let e as KVCError where e.kind == .corrupt || e.kind == .incompatible || e.kind == .notACheckpoint {
                s.refused += 1
            } catch {
                s.errors.append("\(error)")
            }
            if idleMS > 0 { usleep(UInt32(idleMS * 1000)) }
        }
        printJSON(s)
    }
}
