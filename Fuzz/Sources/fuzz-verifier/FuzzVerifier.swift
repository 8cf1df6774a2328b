import Foundation
import FuzzDriver
import KVCFormat

/// Arbitrary bytes as a checkpoint file: the header probe, the index reader,
/// the whole verifier (v1, v2, the payload prefix, the tool-map trailer) under
/// every engine ABI in force, the daemon's verifier (v1 bodies checksummed,
/// compared with a record), a verified load, and the engine's in-place
/// updates followed by another verification. Nothing may crash, leak, or
/// allocate by a length field (scripts/fuzz sets -malloc_limit_mb).
enum Scratch {
    /// One private directory per process, on tmpfs when there is one; the file is rewritten for every input.
    static let dir: String = {
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm/" : NSTemporaryDirectory()
        let d = base + "kvc-fuzz-\(getpid())"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: Scratch.dir) }
        return d
    }()
    static let path = dir + "/" + String(repeating: "0", count: 40) + ".kv"
}

func write(_ b: [UInt8], to path: String) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { fatalError("cannot write the scratch file \(path): errno \(errno)") }
    _ = b.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

/// libFuzzer's entry point (its own `main`, linked in but unused, refers to it by this name).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let b = bytes(data, size)
    _ = KVCHeader.probe(b)
    _ = ToolMap.decode(b)
    write(b, to: Scratch.path)
    _ = try? CacheEntry.read(path: Scratch.path)
    for abi: UInt8? in [nil, 2] {
        var o = Verifier.Options()
        o.engineABI = abi
        o.chunkSize = 4096 // inputs are small; a 1 MiB buffer per look would only time the allocator
        _ = try? Verifier(options: o).verify(path: Scratch.path)
    }
    // The daemon's verifier: a record taken from a sound v1 file holds on the same bytes,
    // and one with other checksums finds the file corrupt.
    var record: RecordedChecksum?
    var daemon = Verifier(engineABI: nil, recorded: nil)
    daemon.options.chunkSize = 4096
    if let r = try? daemon.verify(path: Scratch.path), r.verdict == .ok, let body = r.bodyChecksums {
        let rec = body.recorded(at: 0)
        daemon.options.recorded = rec
        if let again = try? daemon.verify(path: Scratch.path), again.problems.contains(where: { $0.detail.contains("recorded") }) {
            fatalError("a record taken from a file does not hold on the same bytes")
        }
        var wrong = rec
        wrong.payloadCRC ^= 1
        daemon.options.recorded = wrong
        if let other = try? daemon.verify(path: Scratch.path), other.verdict != .corrupt {
            fatalError("a record with another payload checksum did not find the file corrupt")
        }
        record = rec
    }
    var loader = CheckpointLoader()
    loader.verifierOptions.chunkSize = 4096
    _ = try? loader.load(path: Scratch.path)
    if let h = try? CheckpointUpdater().rewriteToolMap(path: Scratch.path, toolMap: ToolMap([.init(id: "id", dsml: "x")]), now: 1) {
        _ = h
        var o = Verifier.Options()
        o.chunkSize = 4096
        let r = try? Verifier(options: o).verify(path: Scratch.path)
        // The engine's own update of a file it accepted leaves a file whose header holds.
        if let r, r.header?.version == 2, r.problems.contains(where: { $0.region == .header && $0.expectedCRC != nil }) {
            fatalError("a tool-map rewrite left a v2 header whose CRC does not hold")
        }
        // The engine's updates never touch text or payload: a v1 record stays valid across them.
        if let record {
            var v = Verifier(engineABI: nil, recorded: record)
            v.options.chunkSize = 4096
            if let after = try? v.verify(path: Scratch.path), after.problems.contains(where: { $0.detail.contains("recorded") }) {
                fatalError("a tool-map rewrite broke a v1 record: \(after.problems)")
            }
        }
    }
    _ = try? CheckpointUpdater().touch(path: Scratch.path, now: 2)
    return 0
}

/// Runs before fuzzing: one warm-up input, so lazily built globals and Foundation's own
/// caches are made here and not counted as a leak of the first input.
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> CInt {
    let warm: [UInt8] = Array("KVC".utf8) + [2] + [UInt8](repeating: 1, count: 200)
    _ = warm.withUnsafeBufferPointer { fuzzOne($0.baseAddress, $0.count) }
    return 0
}

@_cdecl("fuzz_verifier_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzOne)
}
