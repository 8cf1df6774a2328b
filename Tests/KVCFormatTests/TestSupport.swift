import Foundation
import KVCFormat
import KVCSimulation

/// A fresh directory on the real file system, removed when the test is done.
final class TempDir {
    let path: String
    init() {
        let p = NSTemporaryDirectory() + "kvc-test-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        path = p
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
}

enum Fixture {
    static let createdAt: UInt64 = 1_700_000_000

    /// Stores a checkpoint through the real writer and returns its path. By default as the engine
    /// that writes each version does: v1 as ds4 from e8e8779 (payload ABI 2, payload version 2),
    /// v2 as PR #146 (payload ABI 0, payload version 1).
    @discardableResult
    static func store(in dir: String, version: UInt8 = 2, text: String = "Some prompt text, long enough to matter.",
                      payloadBytes: UInt64 = 4096, tokens: UInt32 = 5, reason: KVCReason = .cold,
                      toolMap: ToolMap? = nil, hits: UInt32 = 0, createdAt: UInt64 = Fixture.createdAt,
                      lastUsed: UInt64? = nil, modelID: UInt8 = 1, quantBits: UInt8 = 4, ctxSize: UInt32 = 4096,
                      seed: UInt64 = 3, payloadABI: UInt8? = nil, payloadVersion: UInt32? = nil) throws -> String {
        let payloadABI = payloadABI ?? (version == 2 ? KVCHeader.pr146PayloadABI : KVCHeader.kvstorePayloadABI)
        let payloadVersion = payloadVersion ?? Generation.knownPayloadVersion(abi: payloadABI) ?? PayloadPrefix.currentVersion
        var meta = CheckpointWriter.Metadata(reason: reason, modelID: modelID, quantBits: quantBits, ctxSize: ctxSize,
                                             tokens: tokens, createdAt: createdAt, lastUsed: lastUsed)
        meta.hits = hits
        meta.payloadABI = payloadABI
        return try CheckpointWriter(version: version).store(
            in: dir, text: Array(text.utf8),
            payload: SyntheticPayload(byteCount: payloadBytes, tokens: tokens, ctxSize: ctxSize, seed: seed, version: payloadVersion),
            metadata: meta, toolMap: toolMap)
    }

    /// The generation that wrote a file of `version` by default: what judges it as its engine would.
    static func engine(version: UInt8) -> Generation { version == 2 ? .pr146 : .ds4e8e8779 }

    static let map = ToolMap([ToolMap.Entry(id: "call_1", dsml: "<|DSML|invoke name=\"x\"></|DSML|invoke>"),
                              ToolMap.Entry(id: "call_2", dsml: "")])
}

enum Bytes {
    static func read(_ path: String) -> [UInt8] { Array(FileManager.default.contents(atPath: path)!) }

    static func write(_ bytes: [UInt8], to path: String) {
        try! Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// Changes one byte in place (the damage a bad sector or a stray write leaves).
    static func flip(_ path: String, at offset: Int, xor mask: UInt8 = 0x5A) {
        var b = read(path)
        b[offset] ^= mask
        write(b, to: path)
    }

    static func mutateHeader(_ path: String, reseal: Bool, _ change: (inout KVCHeader) -> Void) {
        var b = read(path)
        guard case .header(var h) = KVCHeader.probe(b) else { fatalError("no header in \(path)") }
        change(&h)
        let enc = (reseal ? h.sealed() : h).encoded()
        b.replaceSubrange(0..<enc.count, with: enc)
        write(b, to: path)
    }

    /// Recomputes every CRC of a v2 file as its writer would: the bytes now are the bytes written.
    static func reseal(_ path: String) {
        var b = read(path)
        guard case .header(var h) = KVCHeader.probe(b), h.version == 2, let end = h.bodyEnd else { return }
        let t = h.prologueSize, p = t + Int(h.textBytes)
        h.textCRC = CRC32C.checksum(Array(b[t..<p]))
        h.payloadCRC = CRC32C.checksum(Array(b[p..<Int(end)]))
        h.trailerCRC = Int(end) < b.count ? CRC32C.checksum(Array(b[Int(end)...])) : 0
        let enc = h.sealed().encoded()
        b.replaceSubrange(0..<enc.count, with: enc)
        write(b, to: path)
    }

    static func header(_ path: String) -> KVCHeader {
        guard case .header(let h) = KVCHeader.probe(read(path)) else { fatalError("no header in \(path)") }
        return h
    }
}

/// Bit-at-a-time CRC32C straight from the definition (reflected 0x82F63B78),
/// an independent oracle for the table-free ISA-L path.
func bitwiseCRC32C(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        crc ^= UInt32(b)
        for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
    }
    return crc ^ 0xFFFF_FFFF
}
