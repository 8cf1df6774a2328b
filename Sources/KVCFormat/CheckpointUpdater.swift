#if canImport(Glibc)
import Glibc
#endif

/// The engine's two in-place updates of a live checkpoint, byte for byte and
/// step for step as the real engine makes them (kvc-format.md revision 2,
/// "How the real engine writes"), and like it without any lock:
///
/// - touch: `ds4_kvstore_touch_file` rewrites hits and last_used in one write
///   of the first 48 bytes (v1) or 64 bytes (v2, header CRC included). A
///   reader can see a torn header in between.
/// - tool map: `kv_cache_rewrite_trailer` truncates the file at the end of the
///   payload, writes the new map (possibly empty), flushes, then rewrites the
///   48/64 header bytes with ext bit 0 set for a non-empty map and cleared for
///   an empty one (v2: new toolmap_crc, 0 when empty, and header_crc). Between
///   the truncate and the header rewrite the file is inconsistent, and stays
///   so if the engine dies there.
///
/// `pauseBetweenSteps` widens those windows (tests and the simulator use it
/// to race the daemon); `onStep` lets a crash test stop the writer at each.
/// Both refuse a header the engine itself would not act on: resealing a
/// damaged v2 header would launder the damage into a file that verifies.
public struct CheckpointUpdater: Sendable {
    public enum Step: String, Sendable, CaseIterable {
        /// The file was truncated at the end of the payload (tool-map rewrite).
        case truncated
        /// The new map was written and flushed; the header still describes the old one.
        case trailerWritten
        /// The header was rewritten: the update is complete.
        case headerWritten
    }

    /// The payload ABI of the engine generation playing; nil accepts any (upstream ds4 never reads byte 20).
    public var engineABI: UInt8?
    /// Sleep this long after each step of a tool-map rewrite.
    public var pauseBetweenSteps: Duration = .zero
    /// Called after each step, before the pause.
    public var onStep: (@Sendable (Step) -> Void)?

    public init(engineABI: UInt8? = nil) { self.engineABI = engineABI }

    /// Sets hits (default: one more) and last_used. Returns the new header.
    @discardableResult
    public func touch(path: String, hits: UInt32? = nil, now: UInt64) throws -> KVCHeader {
        let file = try CheckpointFile.open(path, .readWrite)
        var h = try trustedHeader(file)
        h.hits = hits ?? (h.hits == UInt32.max ? h.hits : h.hits + 1)
        h.lastUsed = now
        let bytes = h.sealed().encoded()
        try file.write(Array(bytes[0..<h.touchSize]), at: 0)
        onStep?(.headerWritten)
        return h.sealed()
    }

    /// Replaces the tool-map trailer with `toolMap`; an empty map leaves the
    /// file ending at the payload with ext bit 0 cleared.
    @discardableResult
    public func rewriteToolMap(path: String, toolMap: ToolMap, now: UInt64) throws -> KVCHeader {
        let trailer = toolMap.entries.isEmpty ? [] : toolMap.encoded()
        let file = try CheckpointFile.open(path, .readWrite)
        var h = try trustedHeader(file)
        guard let end = h.bodyEnd, end <= (try file.size) else {
            throw KVCError(.corrupt, path: path, "file is shorter than its header says; not rewriting its trailer")
        }
        try file.truncate(to: end)
        try step(.truncated)
        if !trailer.isEmpty { try file.write(trailer, at: end) }
        try step(.trailerWritten)
        if trailer.isEmpty { h.extFlags &= ~KVCHeader.extToolMap } else { h.extFlags |= KVCHeader.extToolMap }
        h.lastUsed = now
        if h.version == 2 { h.trailerCRC = trailer.isEmpty ? 0 : CRC32C.checksum(trailer) }
        let bytes = h.sealed().encoded()
        try file.write(Array(bytes[0..<h.touchSize]), at: 0)
        try step(.headerWritten)
        return h.sealed()
    }

    private func step(_ s: Step) throws {
        onStep?(s)
        if s != .headerWritten && pauseBetweenSteps > .zero {
            let c = pauseBetweenSteps.components
            var ts = timespec(tv_sec: Int(c.seconds), tv_nsec: Int(c.attoseconds / 1_000_000_000))
            var left = timespec()
            while nanosleep(&ts, &left) != 0 && errno == EINTR { ts = left }
        }
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
        if let abi = engineABI, h.payloadABI != abi {
            throw KVCError(.incompatible, path: file.path, "payload ABI \(h.payloadABI), the engine reads \(abi); not updating")
        }
        guard h.tokens != 0, h.quantBits == 2 || h.quantBits == 4 else {
            throw KVCError(.corrupt, path: file.path, "header has tokens \(h.tokens), quant_bits \(h.quantBits); not updating")
        }
        return h
    }
}
