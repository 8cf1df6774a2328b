import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Stores a checkpoint as the engine does: write `<sha>.kv.tmp.<pid>`, then
/// rename it over `<sha>.kv`, so a reader only ever sees a whole file under
/// the checkpoint's name. In the engine's order: the prologue with zero CRCs,
/// the text, the payload, the trailer, then (v2) the 64 header bytes again
/// with the CRCs. Where PR #146 reads the payload and trailer back to compute
/// them, this computes them while the bytes go out: the same bytes on disk,
/// one read of the payload fewer.
public struct CheckpointWriter: Sendable {
    public struct Metadata: Sendable {
        public var reason: KVCReason
        public var modelID: UInt8
        public var quantBits: UInt8
        public var ctxSize: UInt32
        public var tokens: UInt32
        public var hits: UInt32 = 0
        public var createdAt: UInt64
        public var lastUsed: UInt64
        /// Key-kind bits (responses/thinking visible); the tool-map bit is set from `toolMap`.
        public var keyFlags: UInt8 = 0
        /// Byte 20: 2 for the shared-kvstore engine, 0 for upstream ds4 (PR #146).
        public var payloadABI: UInt8 = KVCHeader.kvstorePayloadABI

        public init(reason: KVCReason, modelID: UInt8, quantBits: UInt8, ctxSize: UInt32, tokens: UInt32,
                    createdAt: UInt64, lastUsed: UInt64? = nil) {
            self.reason = reason
            self.modelID = modelID
            self.quantBits = quantBits
            self.ctxSize = ctxSize
            self.tokens = tokens
            self.createdAt = createdAt
            self.lastUsed = lastUsed ?? createdAt
        }
    }

    /// v2 unless told otherwise; v1 is for reproducing what today's engine writes.
    public var version: UInt8
    public var chunkSize = 1 << 20
    /// fsync before the rename. The engine does not; a daemon test may.
    public var durable = false

    public init(version: UInt8 = 2) {
        precondition(version == 1 || version == 2, "the writer writes v1 or v2")
        self.version = version
    }

    /// Writes the checkpoint for `text` into `directory` and returns its path.
    @discardableResult
    public func store(in directory: String, text: [UInt8], payload: some PayloadSource,
                      metadata m: Metadata, toolMap: ToolMap? = nil) throws -> String {
        guard text.count <= Int(UInt32.max) else {
            throw KVCError(.invalidArgument, path: directory, "text of \(text.count) bytes does not fit the u32 length field")
        }
        let sha = TextDigest.sha1Hex(text)
        let dir = try CacheDirectory(path: directory)
        let finalName = CheckpointName.fileName(sha: sha)
        let tmpName = CheckpointName.temporaryName(sha: sha, pid: getpid())
        let file = try CheckpointFile.open(in: dir.fd, name: tmpName, dirPath: directory,
                                           flags: O_WRONLY | O_CREAT | O_TRUNC)
        var renamed = false
        defer { if !renamed { _ = unlinkat(dir.fd.rawValue, tmpName, 0) } }

        var h = KVCHeader(version: version, quantBits: m.quantBits, reason: m.reason,
                          extFlags: m.keyFlags | (toolMap == nil ? 0 : KVCHeader.extToolMap),
                          modelID: m.modelID, tokens: m.tokens, hits: m.hits, ctxSize: m.ctxSize,
                          payloadABI: m.payloadABI, createdAt: m.createdAt, lastUsed: m.lastUsed,
                          payloadBytes: payload.byteCount, textBytes: UInt32(text.count))
        try file.write(h.encoded(), at: 0)
        var offset = UInt64(h.prologueSize)
        try file.write(text, at: offset)
        h.textCRC = CRC32C.checksum(text)
        offset += UInt64(text.count)

        var crc = CRC32C()
        let buffer = ReadBuffer(count: chunkSize)
        var done: UInt64 = 0
        while done < payload.byteCount {
            let n = Int(min(UInt64(chunkSize), payload.byteCount - done))
            let slice = UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[0..<n])
            try payload.fill(offset: done, into: slice)
            crc.update(UnsafeRawBufferPointer(slice))
            try file.write(UnsafeRawBufferPointer(slice), at: offset + done)
            done += UInt64(n)
        }
        h.payloadCRC = crc.value
        offset += payload.byteCount

        if let toolMap {
            let t = toolMap.encoded()
            try file.write(t, at: offset)
            h.trailerCRC = CRC32C.checksum(t)
        }
        if version == 2 { try file.write(Array(h.sealed().encoded()[0..<h.touchSize]), at: 0) }
        if durable { try file.sync() }
        guard renameat(dir.fd.rawValue, tmpName, dir.fd.rawValue, finalName) == 0 else {
            throw KVCError.io(Errno(rawValue: errno), path: dir.pathOf(tmpName), "cannot rename into place")
        }
        renamed = true
        return dir.pathOf(finalName)
    }
}
