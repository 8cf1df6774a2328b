import Foundation
import FuzzDriver
import KVCFormat

/// Arbitrary bytes as a checkpoint file: the header probe, the index reader,
/// the whole verifier (v1, v2, the payload prefix, the tool-map trailer,
/// ds4-agent's title trailer) under every engine generation in force (none,
/// ds4 e8e8779, PR #146, and the file's own as `auto` learns it), the same
/// bytes as ds4-agent's `sysprompt.kv`, the daemon's verifier (v1 bodies
/// checksummed, compared with a record), a verified load, and the engine's
/// in-place updates followed by another verification. Nothing may crash,
/// leak, or allocate by a length field (scripts/fuzz sets -malloc_limit_mb);
/// and revision 3's invariants must hold: a generation never makes a file
/// corrupt that none makes corrupt, and a payload version alone is never damage.
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
    static let sysprompt = dir + "/sysprompt.kv"
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
    let entry = try? CacheEntry.read(path: Scratch.path)
    let learned = entry.map { GenerationSetting.auto.resolve(entries: [$0]).generation } ?? nil
    var verdicts: [Verdict] = []
    for engine: Generation? in [nil, .ds4e8e8779, .pr146, learned] {
        var o = Verifier.Options()
        o.engine = engine
        o.chunkSize = 4096 // inputs are small; a 1 MiB buffer per look would only time the allocator
        if let r = try? Verifier(options: o).verify(path: Scratch.path) { verdicts.append(r.verdict) }
    }
    // Byte evidence outside the generation rules (CRCs, size, name) is the same under every engine;
    // the generation-only rules can add corruption only within a generation the file belongs to.
    if verdicts.count == 4, verdicts[1] == .corrupt || verdicts[2] == .corrupt,
       verdicts[0] != .corrupt, let e = entry?.generation {
        let mine = verdicts[1] == .corrupt ? Generation.ds4e8e8779 : Generation.pr146
        if mine.refusal(of: e) != nil { fatalError("a file of another generation was called corrupt by a generation rule") }
    }
    // The same bytes as ds4-agent's fixed name: verified, never judged by their name.
    write(b, to: Scratch.sysprompt)
    if let r = try? Verifier(engine: learned).verify(path: Scratch.sysprompt), r.problems.contains(where: { $0.region == .name }) {
        fatalError("sysprompt.kv was judged by its name: \(r.problems)")
    }
    // A payload version alone is never damage: change it in a file found ok, and it is ok or incompatible.
    if let h = entry?.header, h.version == 1, let end = h.bodyEnd, h.payloadBytes >= 52, UInt64(b.count) >= end,
       let ok = try? Verifier(engine: learned).verify(path: Scratch.path), ok.verdict == .ok {
        var other = b
        other[h.prologueSize + Int(h.textBytes) + 4] &+= 1
        write(other, to: Scratch.path)
        if let r = try? Verifier(engine: learned).verify(path: Scratch.path), r.verdict == .corrupt {
            fatalError("a payload version alone made a file corrupt: \(r.problems)")
        }
        write(b, to: Scratch.path)
    }
    // The daemon's verifier: a record taken from a sound v1 file holds on the same bytes,
    // and one with other checksums finds the file corrupt.
    var record: RecordedChecksum?
    var daemon = Verifier(engine: nil, recorded: nil)
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
            var v = Verifier(engine: nil, recorded: record)
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
