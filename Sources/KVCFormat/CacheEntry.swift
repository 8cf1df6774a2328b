/// What the index knows about one checkpoint: its header and its size on
/// disk, read without touching text or payload. Eviction decides from this
/// alone, which is what lets the daemon decide without rescanning.
public struct CacheEntry: Sendable, Equatable {
    /// The lower-case SHA-1 from the file name (`sysprompt.kv` for ds4-agent's fixed name).
    public var sha: String
    /// The name as it is in the directory (the engine accepts upper-case hex too).
    public var fileName: String
    /// nil when the prologue could not be read as KVC (damaged, too short, unreadable):
    /// the file still takes space, so it still counts against the budget.
    public var header: KVCHeader?
    /// The first 8 bytes of the payload: its kind and version (`.absent` when not read).
    public var payloadTag: PayloadTag = .absent
    public var fileSize: UInt64
    public var identity: FileIdentity
    /// Why no engine could index this file whatever its generation (unknown
    /// version, unreadable or short prologue, shorter than prologue + text +
    /// payload, unreadable file); nil when one could.
    public var defect: String?
    /// Why the engine in force cannot use this file (`defect`, or another
    /// payload ABI); nil when it can. Such files score 0 and go first.
    public var unusable: String?

    public init(sha: String, fileName: String? = nil, header: KVCHeader?, fileSize: UInt64, identity: FileIdentity,
                unusable: String?) {
        self.sha = sha
        self.fileName = fileName ?? CheckpointName.fileName(sha: sha)
        self.header = header
        self.fileSize = fileSize
        self.identity = identity
        self.defect = unusable
        self.unusable = unusable
    }

    /// The file's own generation, when its header could be read.
    public var generation: Generation? { header.map { Generation(header: $0, payload: payloadTag) } }

    /// A ds4-agent save: a user's, never evicted by budget or score.
    public var isAgentSession: Bool { header?.isAgentSession ?? false || fileName == CheckpointName.agentSystemPrompt }

    /// This entry as the engine of generation `engine` sees it (nil: not known, judged by defects only).
    public func judged(engine: Generation?) -> CacheEntry {
        var e = self
        e.unusable = defect
        if e.unusable == nil, let engine, let g = generation, let why = engine.refusal(of: g) {
            e.unusable = why
        }
        return e
    }

    /// A file that could not be opened or read: it takes its `stat` size and goes first.
    public static func unreadable(name: String, status: FileStatus, error: KVCError) -> CacheEntry? {
        guard let sha = CheckpointName.key(of: name) else { return nil }
        let why = error.errno.map { "unreadable: \($0.description)" } ?? "unreadable: \(error.detail)"
        return CacheEntry(sha: sha, fileName: name, header: nil, fileSize: status.size, identity: status.identity, unusable: why)
    }

    /// How much of a file the index reads at first: one page.
    static let firstRead: UInt64 = 4096

    /// Reads the prologue of an open checkpoint (the caller opened it without following links);
    /// `st` is the open file's `fstat`.
    static func read(_ file: borrowing CheckpointFile, status st: FileStatus, name: String, sha: String, engine: Generation?) throws -> CacheEntry {
        // One read for the prologue and, when the text is short, the payload's first 8 bytes too: a
        // page costs the disk the same whatever part of it is asked for.
        let head = try file.read(at: 0, count: Int(min(st.size, Self.firstRead)))
        let identity = st.identity
        var tag = PayloadTag.absent
        func entry(_ h: KVCHeader?, _ defect: String?) -> CacheEntry {
            var e = CacheEntry(sha: sha, fileName: name, header: h, fileSize: st.size, identity: identity, unusable: defect)
            e.payloadTag = tag
            return e.judged(engine: engine)
        }
        switch KVCHeader.probe(head) {
        case .header(let h):
            if h.version == 2 && h.payloadABI != KVCHeader.pr146PayloadABI && h.computedHeaderCRC != h.headerCRC {
                return entry(h, "unknown layout (version 2, byte 20 = \(h.payloadABI), no valid PR #146 header CRC)")
            }
            // The payload's kind and version: 8 bytes where the payload starts (from the first read, or one more).
            let payloadStart = UInt64(h.prologueSize) + UInt64(h.textBytes)
            if h.payloadBytes >= 8, payloadStart + 8 <= st.size {
                let b = payloadStart + 8 <= UInt64(head.count) ? Array(head[Int(payloadStart)..<Int(payloadStart) + 8])
                                                                : try file.read(at: payloadStart, count: 8)
                tag = b.withUnsafeBytes { PayloadTag(decoding: $0, payloadBytes: h.payloadBytes) }
            }
            // What `stat` shows is enough to know the engine's index skips it. A torn header
            // (a touch in progress) never shortens these fields: they are the same before and after.
            if let end = h.bodyEnd, st.size < end {
                return entry(h, "file is \(st.size) bytes, shorter than prologue + text + payload (\(end))")
            }
            if h.bodyEnd == nil { return entry(h, "text and payload lengths overflow a 64-bit size") }
            return entry(h, nil)
        case .unknownVersion(let v):
            return entry(nil, "unknown version \(v)")
        case .badMagic:
            return entry(nil, "not a KVC header")
        case .short:
            return entry(nil, "too short for a KVC header")
        }
    }

    /// Reads the prologue of the checkpoint at `path`.
    public static func read(path: String, engine: Generation? = nil) throws -> CacheEntry {
        let name = String(path.split(separator: "/").last ?? "")
        guard let sha = CheckpointName.key(of: name) else {
            throw KVCError(.notACheckpoint, path: path, "name is not <40 hex digits>.kv")
        }
        let file = try CheckpointFile.open(path, .readOnly)
        return try read(file, status: try file.status(), name: name, sha: sha, engine: engine)
    }
}
