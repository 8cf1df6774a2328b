/// The engine's two in-place updates of a live checkpoint, each under an
/// exclusive `flock` so a checker can exclude it (kvc-format.md, "In-place
/// updates"):
///
/// - touch: `ds4_kvstore_touch_file` rewrites hits and last_used (the first
///   48 bytes in v1; in v2 the whole 68-byte prologue, header CRC included);
/// - tool map: `kv_cache_rewrite_trailer` truncates after the payload, writes
///   the new trailer, then rewrites the header (ext bit 0, last_used, and in
///   v2 trailer and header CRC). A crash between the two leaves trailer bytes
///   the old header does not flag: a v1 warning, a v2 trailer CRC mismatch.
///
/// Both refuse a header they cannot trust: resealing a damaged v2 header would
/// launder the damage into a file that verifies.
public struct CheckpointUpdater: Sendable {
    /// How long to wait for another writer's lock; nil waits as the engine does.
    public var lockTimeout: Duration?

    public init(lockTimeout: Duration? = nil) { self.lockTimeout = lockTimeout }

    /// Sets hits (default: one more) and last_used. Returns the new header.
    @discardableResult
    public func touch(path: String, hits: UInt32? = nil, now: UInt64) throws -> KVCHeader {
        let file = try CheckpointFile.open(path, .readWrite)
        try file.lock(exclusive: true, timeout: lockTimeout)
        defer { file.unlock() }
        var h = try trustedHeader(file)
        h.hits = hits ?? (h.hits == UInt32.max ? h.hits : h.hits + 1)
        h.lastUsed = now
        let bytes = h.sealed().encoded()
        try file.write(Array(bytes[0..<h.touchSize]), at: 0)
        return h.sealed()
    }

    /// Replaces the tool-map trailer. An empty map changes nothing, as in the engine.
    @discardableResult
    public func rewriteToolMap(path: String, toolMap: ToolMap, now: UInt64) throws -> KVCHeader? {
        let trailer = toolMap.encoded()
        guard !toolMap.entries.isEmpty else { return nil }
        let file = try CheckpointFile.open(path, .readWrite)
        try file.lock(exclusive: true, timeout: lockTimeout)
        defer { file.unlock() }
        var h = try trustedHeader(file)
        guard let end = h.bodyEnd, end <= (try file.size) else {
            throw KVCError(.corrupt, path: path, "file is shorter than its header says; not rewriting its trailer")
        }
        try file.truncate(to: end)
        try file.write(trailer, at: end)
        h.extFlags |= KVCHeader.extToolMap
        h.lastUsed = now
        if h.version == 2 { h.trailerCRC = CRC32C.checksum(trailer) }
        let bytes = h.sealed().encoded()
        try file.write(Array(bytes[0..<h.touchSize]), at: 0)
        return h.sealed()
    }

    /// The header, if the engine would act on it: `ds4_kvstore_read_header`'s
    /// rules, and for v2 a header CRC that holds.
    private func trustedHeader(_ file: borrowing CheckpointFile) throws -> KVCHeader {
        let head = try file.read(at: 0, count: KVCHeader.v2PrologueSize)
        guard case .header(let h) = KVCHeader.probe(head) else {
            throw KVCError(.notACheckpoint, path: file.path, "no readable v1 or v2 KVC header")
        }
        if h.version == 2 && h.computedHeaderCRC != h.headerCRC {
            throw KVCError(.corrupt, path: file.path,
                           "header CRC mismatch (stored \(hex32(h.headerCRC)), computed \(hex32(h.computedHeaderCRC))); not updating")
        }
        guard h.payloadABI == KVCHeader.currentPayloadABI else {
            throw KVCError(.incompatible, path: file.path, "payload ABI \(h.payloadABI); not updating")
        }
        guard h.tokens != 0, h.quantBits == 2 || h.quantBits == 4 else {
            throw KVCError(.corrupt, path: file.path, "header has tokens \(h.tokens), quant_bits \(h.quantBits); not updating")
        }
        return h
    }
}
