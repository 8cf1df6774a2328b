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

/// A large directory is scanned by several threads (`CacheDirectory.parallelScanFiles`): every name is
/// seen exactly once, sorted into entries, ignored names and private names as a one-thread scan would.
@Suite struct ParallelScanTests {
    @Test func aLargeDirectory_scannedByThreads_seesEveryNameOnce() throws {
        let dir = TempDir()
        let one = try Fixture.store(in: dir.path, version: 2, seed: 9)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: one))
        try FileManager.default.removeItem(atPath: one)
        var checkpoints = Set<String>()
        for i in 0..<(CacheDirectory.parallelScanFiles + 1000) {
            let name = String(format: "%040x.kv", i)
            try bytes.write(to: URL(fileURLWithPath: dir.file(name)))
            checkpoints.insert(name)
        }
        let others = (0..<7).map { "notes-\($0).txt" }
        for n in others { try Data("x".utf8).write(to: URL(fileURLWithPath: dir.file(n))) }
        let taken = (0..<3).map { CheckpointName.takenAwayName(for: String(format: "%040x.kv", 900_000 + $0), inode: UInt64(10 + $0)) }
        for n in taken { try bytes.write(to: URL(fileURLWithPath: dir.file(n))) }

        let scan = try CacheDirectory(path: dir.path).scan()
        #expect(scan.entries.count == checkpoints.count && Set(scan.entries.map(\.fileName)) == checkpoints, "each checkpoint once")
        #expect(Set(scan.ignored.map(\.name)) == Set(others) && scan.ignored.count == others.count)
        #expect(Set(scan.takenAway) == Set(taken) && scan.takenAway.count == taken.count)
        #expect(scan.errors.isEmpty)
        #expect(scan.entries.allSatisfy { $0.header?.version == 2 && $0.fileSize == UInt64(bytes.count) })
        #expect(scan.engineABI.generation != nil, "resolved from the entries")
    }
}
