import Foundation
import Testing
@testable import KVCFormat
import KVCSimulation

/// The index's read of one checkpoint (`CacheEntry.read`): the prologue and the payload's kind and
/// version, whether the payload starts within the first page (one read) or past it (a second read).
@Suite struct CacheEntryReadTests {
    @Test(arguments: [100, 4000, 4030, 5000, 20_000])
    func thePayloadTag_isRead_whereverThePayloadStarts(textBytes: Int) throws {
        let dir = TempDir()
        for (version, payloadVersion): (UInt8, UInt32) in [(1, 2), (2, 1)] {
            let text = Array(repeating: UInt8(ascii: "a"), count: textBytes) + Array("\(version)".utf8)
            let path = try CheckpointWriter(version: version).store(
                in: dir.path, text: text,
                payload: SyntheticPayload(byteCount: 2000, tokens: 3, ctxSize: 4096, seed: 1, version: payloadVersion),
                metadata: .init(reason: .cold, modelID: 1, quantBits: 4, ctxSize: 4096, tokens: 3, createdAt: 1))
            let e = try CacheEntry.read(path: path)
            #expect(e.payloadTag == .dsv4(version: payloadVersion), "v\(version), \(text.count) bytes of text: \(e.payloadTag)")
            #expect(e.header?.textBytes == UInt32(text.count))
            #expect(e.defect == nil)
        }
    }
}
