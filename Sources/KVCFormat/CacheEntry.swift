/// What the index knows about one checkpoint: its header and its size on
/// disk, read without touching text or payload. Eviction decides from this
/// alone, which is what lets the daemon decide without rescanning.
public struct CacheEntry: Sendable, Equatable {
    /// The lower-case SHA-1 from the file name.
    public var sha: String
    public var fileName: String { CheckpointName.fileName(sha: sha) }
    /// nil when the prologue could not be read as KVC (damaged, or too short):
    /// the file still takes space, so it still counts against the budget.
    public var header: KVCHeader?
    public var fileSize: UInt64
    public var identity: FileIdentity
    /// Why the engine cannot use this file (unknown version, other payload
    /// ABI, unreadable prologue); nil when it can. Such files score 0.
    public var unusable: String?

    public init(sha: String, header: KVCHeader?, fileSize: UInt64, identity: FileIdentity, unusable: String?) {
        self.sha = sha
        self.header = header
        self.fileSize = fileSize
        self.identity = identity
        self.unusable = unusable
    }

    /// Reads the prologue of an open checkpoint (the caller opened it without following links).
    static func read(_ file: borrowing CheckpointFile, sha: String) throws -> CacheEntry {
        let st = try file.status()
        let head = try file.read(at: 0, count: KVCHeader.v2PrologueSize)
        let identity = FileIdentity(device: st.device, inode: st.inode)
        switch KVCHeader.probe(head) {
        case .header(let h):
            var unusable: String? = nil
            if h.payloadABI != KVCHeader.currentPayloadABI { unusable = "payload ABI \(h.payloadABI)" }
            return CacheEntry(sha: sha, header: h, fileSize: st.size, identity: identity, unusable: unusable)
        case .unknownVersion(let v):
            return CacheEntry(sha: sha, header: nil, fileSize: st.size, identity: identity, unusable: "version \(v)")
        case .badMagic:
            return CacheEntry(sha: sha, header: nil, fileSize: st.size, identity: identity, unusable: "not a KVC header")
        case .short:
            return CacheEntry(sha: sha, header: nil, fileSize: st.size, identity: identity, unusable: "too short for a KVC header")
        }
    }

    /// Reads the prologue of the checkpoint at `path`.
    public static func read(path: String) throws -> CacheEntry {
        let name = String(path.split(separator: "/").last ?? "")
        guard let sha = CheckpointName.sha(of: name) else {
            throw KVCError(.notACheckpoint, path: path, "name is not <40 hex digits>.kv")
        }
        let file = try CheckpointFile.open(path, .readOnly)
        return try read(file, sha: sha)
    }
}
