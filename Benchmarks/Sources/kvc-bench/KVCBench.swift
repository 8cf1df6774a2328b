import ArgumentParser
import CRefISAL
import Foundation
import KVCFormat
#if canImport(Glibc)
import Glibc
#endif

/// Measures the format module against references run in the same process
/// or on the same files, and prints ratios (the targets of issue #2):
/// CRC32C throughput vs ISA-L from C; `kvscrubd verify` wall time and peak
/// RSS vs a C read()+ISA-L loop on a page-cached file; a verified load vs an
/// unverified read of the same checkpoint.
@main
struct KVCBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvc-bench", abstract: "kvscrubd benchmarks, as ratios against references measured in the same run.",
        subcommands: [FormatBench.self, DaemonBench.self], defaultSubcommand: FormatBench.self)
}

struct FormatBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "format", abstract: "Format-module benchmarks: CRC32C, verify, verified load.")

    @Option(name: .customLong("verify-mib"), help: "Size of the checkpoint for the verify benchmark, in MiB.")
    var verifyMiB: Int = 2048

    @Option(name: .customLong("load-mib"), help: "Size of the checkpoint for the load benchmark, in MiB.")
    var loadMiB: Int = 1024

    @Option(name: .customLong("crc-mib"), help: "Size of the in-memory buffer for the CRC benchmark, in MiB.")
    var crcMiB: Int = 256

    @Option(help: "Repetitions of each measurement (the median is reported).")
    var runs: Int = 7

    @Option(help: "Where to write the benchmark files (removed afterwards).")
    var dir: String = "/var/tmp"

    @Option(help: "The kvscrubd binary to time (a release build).")
    var kvscrubd: String = "../.build/release/kvscrubd"

    func run() throws {
        guard FileManager.default.isExecutableFile(atPath: kvscrubd) else {
            throw ValidationError("no kvscrubd at \(kvscrubd): build it first (swift build -c release in the repo root)")
        }
        let binDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        let cref = binDir + "/cref-verify"
        let maxrss = binDir + "/cref-maxrss"
        print("kvc-bench: \(runs) runs each, medians; machine: \(ProcessInfo.processInfo.activeProcessorCount) cores")
        try crcBenchmark()
        let work = dir + "/kvc-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        try verifyBenchmark(work: work, cref: cref, maxrss: maxrss)
        try loadBenchmark(work: work)
    }

    func crcBenchmark() throws {
        let n = crcMiB << 20
        var rng = SystemRandomNumberGenerator()
        var data = [UInt8](repeating: 0, count: n)
        data.withUnsafeMutableBytes { b in
            let words = b.bindMemory(to: UInt64.self)
            for i in words.indices { words[i] = rng.next() }
        }
        var ours: [Double] = [], theirs: [Double] = []
        var a: UInt32 = 0, b: UInt32 = 0
        data.withUnsafeBytes { buf in
            // Alternate which goes first, so neither gains from warm caches or clock ramps.
            for i in 0..<runs * 2 {
                if i % 2 == 0 {
                    ours.append(time { a = CRC32C.checksum(buf) })
                    theirs.append(time { b = cref_crc32c(buf.baseAddress, buf.count) })
                } else {
                    theirs.append(time { b = cref_crc32c(buf.baseAddress, buf.count) })
                    ours.append(time { a = CRC32C.checksum(buf) })
                }
            }
        }
        precondition(a == b, "CRC mismatch between our module and ISA-L")
        let gbOurs = Double(n) / median(ours) / 1e9, gbRef = Double(n) / median(theirs) / 1e9
        report("CRC32C \(crcMiB) MiB in memory", String(format: "ours %.2f GB/s, ISA-L from C %.2f GB/s", gbOurs, gbRef),
               ratio: gbOurs / gbRef, target: ">= 0.95x ISA-L throughput", ok: gbOurs / gbRef >= 0.95)
    }

    func verifyBenchmark(work: String, cref: String, maxrss: String) throws {
        let path = try makeCheckpoint(in: work, payloadMiB: verifyMiB, seed: 1)
        _ = try spawn(cref, [path]) // warm the page cache
        var ours: [Double] = [], theirs: [Double] = []
        for _ in 0..<runs {
            let o = try spawn(kvscrubd, ["verify", path])
            precondition(o.status == 0, "kvscrubd verify failed on the benchmark file")
            ours.append(o.seconds)
            theirs.append(try spawn(cref, [path]).seconds)
        }
        // Peak RSS through a small launcher (see cref-maxrss): ours would carry this process's peak.
        let rss = try peakRSS(launcher: maxrss, [kvscrubd, "verify", path])
        let r = median(ours) / median(theirs)
        report("verify \(verifyMiB) MiB v2 file, page cache",
               String(format: "kvscrubd verify %.3f s, C read()+ISA-L %.3f s", median(ours), median(theirs)),
               ratio: r, target: "<= 1.15x the C loop", ok: r <= 1.15)
        report("verify peak RSS", "\(rss / 1024) MiB (\(rss) KiB) for a \(verifyMiB) MiB file", ratio: nil,
               target: "< 64 MiB", ok: rss < 64 * 1024)
        try? FileManager.default.removeItem(atPath: path)
    }

    func loadBenchmark(work: String) throws {
        let path = try makeCheckpoint(in: work, payloadMiB: loadMiB, seed: 2)
        let loader = CheckpointLoader()
        _ = try loader.load(path: path, verify: false) // warm the page cache
        var verified: [Double] = [], plain: [Double] = []
        for _ in 0..<runs {
            var n = 0
            plain.append(try time { n = try loader.load(path: path, verify: false).payload.count })
            verified.append(try time { n &+= try loader.load(path: path, verify: true).payload.count })
            precondition(n == 2 * (loadMiB << 20))
        }
        let r = median(verified) / median(plain)
        report("load \(loadMiB) MiB v2 checkpoint, page cache",
               String(format: "verified %.3f s, unverified %.3f s", median(verified), median(plain)),
               ratio: r, target: "<= 1.10x the unverified read", ok: r <= 1.10)
    }

    func makeCheckpoint(in dir: String, payloadMiB: Int, seed: UInt64) throws -> String {
        let payload = RandomPayload(byteCount: UInt64(payloadMiB) << 20, seed: seed)
        return try CheckpointWriter(version: 2).store(
            in: dir, text: Array("benchmark checkpoint \(seed) ".utf8) + Array(repeating: UInt8(ascii: "t"), count: 8192),
            payload: payload,
            metadata: .init(reason: .cold, modelID: 1, quantBits: 4, ctxSize: 65536, tokens: 1, createdAt: 1))
    }

    func report(_ what: String, _ figures: String, ratio: Double?, target: String, ok: Bool) {
        let r = ratio.map { String(format: "ratio %.3f", $0) } ?? ""
        print("\(ok ? "PASS" : "MISS")  \(what): \(figures)  \(r)  (target \(target))")
    }
}

/// A payload that is a valid DSV4 prefix for one token followed by random bytes.
struct RandomPayload: PayloadSource {
    let byteCount: UInt64
    let seed: UInt64
    func fill(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) {
        let prefix = PayloadPrefix(savedContext: 65536, prefillChunk: 2048, rawRingCapacity: 1, rawWindow: 1,
                                   compressedCapacity: 1, tokenCount: 1, layerCount: 1, headDim: 1, indexerHeadDim: 1,
                                   vocabSize: 1, liveRawRows: 1).encoded()
        for i in 0..<buffer.count {
            let p = offset + UInt64(i)
            buffer[i] = p < UInt64(prefix.count) ? prefix[Int(p)] : UInt8(truncatingIfNeeded: (p &* 0x9E37_79B9_7F4A_7C15 ^ seed) >> 29)
        }
    }
}

func time(_ body: () throws -> Void) rethrows -> Double {
    let c = ContinuousClock()
    let t0 = c.now
    try body()
    let d = c.now - t0
    return d / .seconds(1)
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Runs `args` under the launcher and reads back the peak RSS it printed.
func peakRSS(launcher: String, _ args: [String]) throws -> Int {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: launcher)
    p.arguments = args
    let err = Pipe()
    p.standardError = err
    p.standardOutput = FileHandle.nullDevice
    try p.run()
    let data = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    let text = String(decoding: data, as: UTF8.self)
    guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("maxrss_kib ") }),
          let kib = Int(line.dropFirst("maxrss_kib ".count)) else {
        throw ValidationError("cref-maxrss printed no figure: \(text)")
    }
    return kib
}

struct Spawned {
    var status: Int32
    var seconds: Double
}

/// posix_spawn + wait4: wall time of one run of a command, output discarded.
func spawn(_ path: String, _ args: [String]) throws -> Spawned {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    let argv = ([path] + args).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let c = ContinuousClock()
    let t0 = c.now
    let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
    guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EINVAL) }
    var status: Int32 = 0
    var usage = rusage()
    while wait4(pid, &status, 0, &usage) < 0 && errno == EINTR {}
    let d = c.now - t0
    return Spawned(status: (status >> 8) & 0xFF,
                   seconds: d / .seconds(1))
}
