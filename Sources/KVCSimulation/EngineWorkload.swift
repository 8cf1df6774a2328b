import Foundation
import KVCFormat

/// A seeded imitation of ds4's server using its disk cache: conversations
/// that start cold and grow (continued checkpoints every few turns), evict and
/// shutdown anchors, prompt lookups that load the longest stored prefix
/// (verified) and touch it, and tool-map rewrites on live files. Everything
/// goes through the format module, as the real engine's sibling process would.
///
/// It behaves like the real engine, never more politely: no locks, touches as
/// one header write, tool-map rewrites as truncate, write, header (with an
/// optional pause between the steps to widen the window), the generation's
/// header bytes, and PR #146's unlink of a v2 file that fails a load.
///
/// Used by `kvc-engine-sim run`, the daemon's soak tests and the benchmarks,
/// so they all exercise the same write patterns.
public struct EngineWorkload {
    public struct Options: Sendable {
        public var directory: String
        public var seed: UInt64 = 1
        public var duration: Duration = .seconds(10)
        /// Operations per second (0: as fast as possible).
        public var rate: Double = 20
        public var payloadBytes: UInt64 = 256 << 10
        public var version: UInt8 = 2
        /// nil: the generation that writes `version` (v2: PR #146, v1: the shared kvstore).
        public var generation: EngineGeneration?
        /// Pause between the steps of a tool-map rewrite.
        public var stepPause: Duration = .zero
        /// Share of tool-map rewrites that write an empty map.
        public var emptyToolMapShare = 0.1
        public var conversations = 8
        /// Share of operations that are stores / loads; the rest rewrite tool maps.
        public var storeShare = 0.35
        public var loadShare = 0.45
        /// The engine's own budget (`--kv-disk-space-mb`); nil: the engine does not evict.
        public var engineBudgetMB: UInt64?
        public var modelID: UInt8 = 1
        public var quantBits: UInt8 = 4
        public var ctxSize: UInt32 = 32768
        public var maxOperations: Int?
        public init(directory: String) { self.directory = directory }

        public var engine: EngineGeneration { generation ?? .writing(version: version) }
    }

    public struct Summary: Codable, Sendable {
        public var operations = 0
        public var stores = 0
        public var loads = 0
        public var hits = 0
        public var misses = 0
        /// Loads refused because the checkpoint was corrupt (the engine then stores afresh).
        public var corruptRefused = 0
        public var toolMapRewrites = 0
        public var engineEvictions = 0
        /// Operations that raced the daemon removing the file (vanished between lookup and use).
        public var vanished = 0
        /// Files the engine unlinked itself because a load found them corrupt (PR #146, v2).
        public var unlinkedOnLoad = 0
        public var errors: [String] = []
    }

    /// One line of the operation log: what was done to which file.
    public struct Event: Codable, Sendable {
        public var op: String
        public var path: String?
        public var detail: String?
    }

    let options: Options
    var rng: SplitMix64
    var texts: [[UInt8]]
    var stored: [Int] = []  // per conversation: how many turns are stored
    var known: [String] = [] // paths this workload wrote
    public private(set) var summary = Summary()
    let log: (Event) -> Void

    public init(options: Options, log: @escaping (Event) -> Void = { _ in }) {
        self.options = options
        self.log = log
        rng = SplitMix64(seed: options.seed)
        texts = (0..<options.conversations).map { c in
            Array("<|begin|><|System|>You are a careful assistant. Session \(c) of workload \(options.seed).\n".utf8)
                + Array(String(repeating: "Project notes and tool descriptions for session \(c). ", count: 12).utf8)
        }
        stored = Array(repeating: 0, count: options.conversations)
    }

    public mutating func run() -> Summary {
        let clock = ContinuousClock()
        let start = clock.now
        var next = start
        while clock.now - start < options.duration {
            if let max = options.maxOperations, summary.operations >= max { break }
            step(now: UInt64(Date().timeIntervalSince1970))
            summary.operations += 1
            if options.rate > 0 {
                next = next + .nanoseconds(Int64(1e9 / options.rate))
                let wait = next - clock.now
                if wait > .zero { Thread.sleep(forTimeInterval: wait / .seconds(1)) }
            }
        }
        return summary
    }

    mutating func step(now: UInt64) {
        let roll = Double.random(in: 0..<1, using: &rng)
        let c = Int.random(in: 0..<options.conversations, using: &rng)
        do {
            if roll < options.storeShare || known.isEmpty {
                try store(conversation: c, now: now)
            } else if roll < options.storeShare + options.loadShare {
                try load(conversation: c, now: now)
            } else {
                try rewriteToolMap(now: now)
            }
        } catch let e as KVCError where e.errno == .noSuchFileOrDirectory {
            summary.vanished += 1
        } catch let e as KVCError where e.kind == .corrupt || e.kind == .notACheckpoint || e.kind == .incompatible {
            // A touch or tool-map rewrite refused a damaged file, as the engine would.
            summary.corruptRefused += 1
            log(Event(op: "corrupt-refused", path: e.path, detail: e.detail))
        } catch {
            summary.errors.append("\(error)")
            log(Event(op: "error", path: nil, detail: "\(error)"))
        }
    }

    mutating func store(conversation c: Int, now: UInt64) throws {
        let turn = stored[c]
        if turn > 0 {
            texts[c] += Array("<|User|>Turn \(turn): please continue the task with step \(Int.random(in: 0..<1000, using: &rng)).<|Assistant|>Done; here is step \(turn) in detail. ".utf8)
        }
        let reasonRoll = Int.random(in: 0..<10, using: &rng)
        let reason: KVCReason = turn == 0 ? .cold : (reasonRoll == 0 ? .evict : reasonRoll == 1 ? .shutdown : .continued)
        let text = texts[c]
        let tokens = max(1, min(UInt32(text.count / 4), SyntheticPayload.maxTokens(payloadBytes: options.payloadBytes)))
        let payload = SyntheticPayload(byteCount: options.payloadBytes, tokens: tokens, ctxSize: options.ctxSize,
                                       seed: UInt64.random(in: 0...UInt64.max, using: &rng), version: options.engine.payloadVersion)
        let withMap = Bool.random(using: &rng)
        let toolMap = withMap ? randomToolMap() : nil
        if let budget = options.engineBudgetMB { try engineEvict(budgetMB: budget, incoming: text, extra: options.payloadBytes, now: now) }
        var meta = CheckpointWriter.Metadata(reason: reason, modelID: options.engine.modelByte(options.modelID),
                                             quantBits: options.quantBits, ctxSize: options.ctxSize, tokens: tokens, createdAt: now)
        meta.hits = 0
        meta.payloadABI = options.engine.payloadABI
        let path = try CheckpointWriter(version: options.version).store(in: options.directory, text: text, payload: payload,
                                                                       metadata: meta, toolMap: toolMap)
        stored[c] = turn + 1
        if !known.contains(path) { known.append(path) }
        summary.stores += 1
        log(Event(op: "store", path: path, detail: reason.name))
    }

    mutating func load(conversation c: Int, now: UInt64) throws {
        let prompt = texts[c] + Array("<|User|>A new question \(Int.random(in: 0..<1000, using: &rng))".utf8)
        var loader = CheckpointLoader()
        loader.verifierOptions.engine = options.engine.generation
        let compat = CheckpointLoader.Compatibility(modelID: options.engine.modelByte(options.modelID), quantBits: options.quantBits,
                                                    ctxSize: options.ctxSize, engine: options.engine.generation)
        guard let hit = try loader.findTextPrefix(in: options.directory, prompt: prompt, compatibility: compat) else {
            summary.misses += 1
            log(Event(op: "miss", path: nil, detail: nil))
            return
        }
        let path = options.directory + "/" + hit.fileName
        do {
            _ = try loader.load(path: path)
        } catch let e as KVCError where e.kind == .corrupt {
            summary.corruptRefused += 1
            log(Event(op: "corrupt-refused", path: path, detail: e.detail))
            if options.engine.unlinksOnCorruptLoad(version: hit.header?.version), unlink(path) == 0 {
                summary.unlinkedOnLoad += 1
                log(Event(op: "engine-unlink-corrupt", path: path, detail: e.detail))
            }
            return
        }
        try updater.touch(path: path, now: now)
        summary.loads += 1
        summary.hits += 1
        log(Event(op: "load", path: path, detail: nil))
    }

    mutating func rewriteToolMap(now: UInt64) throws {
        let path = known[Int.random(in: 0..<known.count, using: &rng)]
        let map = Double.random(in: 0..<1, using: &rng) < options.emptyToolMapShare ? ToolMap([]) : randomToolMap()
        try updater.rewriteToolMap(path: path, toolMap: map, now: now)
        summary.toolMapRewrites += 1
        log(Event(op: "toolmap", path: path, detail: nil))
    }

    /// `ds4_kvstore_evict` before a store: make room for `extra` bytes, judging
    /// continued waypoints against the incoming text.
    mutating func engineEvict(budgetMB: UInt64, incoming: [UInt8], extra: UInt64, now: UInt64) throws {
        let dir = try CacheDirectory(path: options.directory)
        let scan = try dir.scan()
        let inc = IncomingCheckpoint(text: incoming, modelID: options.engine.modelByte(options.modelID), quantBits: options.quantBits,
                                     ctxSize: options.ctxSize, rejectDifferentQuant: false)
        let usable = scan.entries.map { $0.judged(engine: options.engine.generation) }.filter { $0.unusable == nil }
        let plan = EvictionPlan.make(entries: usable, budgetBytes: budgetMB << 20,
                                     extraBytes: extra, now: now, incoming: inc)
        for v in plan.victims where try dir.remove(name: v.entry.fileName, identity: v.entry.identity) == .removed {
            summary.engineEvictions += 1
            log(Event(op: "engine-evict", path: dir.pathOf(v.entry.fileName), detail: nil))
        }
    }

    /// In-place updates as this generation makes them: no lock, its ABI rule, the configured pause.
    var updater: CheckpointUpdater {
        var u = CheckpointUpdater(engineABI: options.engine.requiredABI)
        u.pauseBetweenSteps = options.stepPause
        return u
    }

    mutating func randomToolMap() -> ToolMap {
        ToolMap((0..<Int.random(in: 1...4, using: &rng)).map { i in
            ToolMap.Entry(id: "call_\(UInt32.random(in: 0...UInt32.max, using: &rng))",
                          dsml: "<|DSML|invoke name=\"tool\(i)\"><|DSML|parameter name=\"q\">x</|DSML|parameter></|DSML|invoke>")
        })
    }
}
