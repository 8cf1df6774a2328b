/// What the index knows about one checkpoint: its header and its size on
/// disk, read without touching text or payload. Eviction decides from this
/// alone, which is what lets the daemon decide without rescanning.
public struct CacheEntry: Sendable, Equatable {
    /// The lower-case SHA-1 from the file name.
    public var sha: String
    /// The name as it is in the directory (the engine accepts upper-case hex too).
    public var fileName: String
    /// nil when the prologue could not be read as KVC (damaged, too short, unreadable):
    /// the file still takes space, so it still counts against the budget.
    public var header: KVCHeader?
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

    /// This entry as the engine reading `engineABI` sees it (nil: ABI not known, judged by defects only).
    public func judged(engineABI: UInt8?) -> CacheEntry {
        var e = self
        e.unusable = defect
        if e.unusable == nil, let abi = engineABI, let h = header, h.payloadABI != abi {
            e.unusable = "payload ABI \(h.payloadABI); the engine in force reads \(abi)"
        }
        return e
    }

    /// A file that could not be opened or read: it takes its `stat` size and goes first.
    public static func unreadable(name: String, status: FileStatus, error: KVCError) -> CacheEntry? {
        guard let sha = CheckpointName.sha(of: name) else { return nil }
        let why = error.errno.map { "unreadable: \($0.description)" } ?? "unreadable: \(error.detail)"
        return CacheEntry(sha: sha, fileName: name, header: nil, fileSize: status.size, identity: status.identity, unusable: why)
    }

    /// Reads the prologue of an open checkpoint (the caller opened it without following links).
    static func read(_ file: borrowing CheckpointFile, name: String, sha: String, engineABI: UInt8?) throws -> CacheEntry {
        let st = try file.status()
        let head = try file.read(at: 0, count: KVCHeader.v2PrologueSize)
        let identity = st.identity
        func entry(_ h: KVCHeader?, _ defect: String?) -> CacheEntry {
            CacheEntry(sha: sha, fileName: name, header: h, fileSize: st.size, identity: identity, unusable: defect)
                .judged(engineABI: engineABI)
        }
        switch KVCHeader.probe(head) {
        case .header(let h):
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
    public static func read(path: String, engineABI: UInt8? = nil) throws -> CacheEntry {
        let name = String(path.split(separator: "/").last ?? "")
        guard let sha = CheckpointName.sha(of: name) else {
            throw KVCError(.notACheckpoint, path: path, "name is not <40 hex digits>.kv")
        }
        let file = try CheckpointFile.open(path, .readOnly)
        return try read(file, name: name, sha: sha, engineABI: engineABI)
    }
}
