import Foundation
import KVCFormat
import KVScrubControl
import KVScrubDaemon
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// libkvcformat as a C engine uses it: the library built by
/// scripts/build-libkvcformat (scripts/test builds it before the suite; a
/// missing one is built here), C programs compiled with cc through
/// pkg-config, and the C engine simulator (Examples/c-engine) beside a real
/// daemon.
@Suite(.serialized) struct CLibraryTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    /// The built library's tree (lib/, include/, lib/pkgconfig/): KVCFORMAT_DIR, else .build/libkvcformat.
    static func libraryTree() async throws -> String {
        let dir = ProcessInfo.processInfo.environment["KVCFORMAT_DIR"] ?? packageRoot + "/.build/libkvcformat"
        if !FileManager.default.fileExists(atPath: dir + "/lib/libkvcformat.so.0") {
            let r = try await Tool.runCapturing(packageRoot + "/scripts/build-libkvcformat", ["--debug", "--out", dir])
            guard r.status == 0 else { throw HarnessCommandFailed(command: "scripts/build-libkvcformat", stderr: r.stderr) }
        }
        return dir
    }

    /// Compiles one C file against the library with cc and pkg-config; returns the executable's path.
    static func compile(_ source: String, into dir: String, flags: [String] = []) async throws -> String {
        let tree = try await libraryTree()
        let pc = try await Tool.runCapturing("/usr/bin/env", ["PKG_CONFIG_PATH=\(tree)/lib/pkgconfig", "pkg-config", "--cflags", "--libs", "kvcformat"])
        #expect(pc.status == 0, "pkg-config: \(pc.stderr)")
        let out = dir + "/" + URL(fileURLWithPath: source).deletingPathExtension().lastPathComponent
        let cc = try await Tool.runCapturing("/usr/bin/cc", ["-std=c11", "-D_DEFAULT_SOURCE", "-Wall", "-Wextra", "-Werror", "-O1", "-g",
                                                       "-pthread"] + flags + ["-o", out, packageRoot + "/" + source]
                                                       + pc.stdout.split(separator: " ").map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) }
                                                           .filter { !$0.isEmpty })
        guard cc.status == 0 else { throw HarnessCommandFailed(command: "cc \(source)", stderr: cc.stderr) }
        return out
    }

    /// Runs a program built against the library (LD_LIBRARY_PATH: the uninstalled tree).
    static func runC(_ exe: String, _ args: [String]) async throws -> Tool.Result {
        let tree = try await libraryTree()
        return try await Tool.runCapturing("/usr/bin/env", ["LD_LIBRARY_PATH=\(tree)/lib", "ASAN_OPTIONS=detect_leaks=1", exe] + args)
    }

    /// Every function kvc.h declares.
    static func headerFunctions() throws -> Set<String> {
        let header = try String(contentsOfFile: packageRoot + "/Sources/CKVCAPI/include/kvc.h", encoding: .utf8)
        let re = try NSRegularExpression(pattern: #"^[a-z_ ]+\**\s*\**(kvc_[a-z0-9_]+)\("#, options: [.anchorsMatchLines])
        let range = NSRange(header.startIndex..., in: header)
        return Set(re.matches(in: header, range: range).map { String(header[Range($0.range(at: 1), in: header)!]) })
    }

    @Test func apiTest_everyCall_againstTheBuiltLibrary_underASanAndUBSan() async throws {
        let root = TempDir()
        let exe = try await Self.compile("Tests/CLibrary/kvc_api_test.c", into: root.path,
                                   flags: ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"])
        try FileManager.default.createDirectory(atPath: root.file("cache"), withIntermediateDirectories: true)
        let version = try #require(String(contentsOfFile: Self.packageRoot + "/Sources/KVCFormatC/Exports+Helpers.swift", encoding: .utf8)
            .split(separator: "\n").first { $0.hasPrefix("let libraryVersion") }?.split(separator: "\"").dropFirst().first)
        let r = try await Self.runC(exe, [root.file("cache"), String(version)])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        let checks = r.stdout.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        #expect(r.stdout.contains(", 0 failed") && checks >= 90, "\(r.stdout)")
        #expect(!r.stderr.contains("ERROR: AddressSanitizer") && !r.stderr.contains("runtime error"), "\(r.stderr)")
    }

    @Test func library_hasItsSONAME_exportsExactlyKvcH_andNeedsNoSwiftRuntime() async throws {
        let lib = try await Self.libraryTree() + "/lib/libkvcformat.so.0"
        let dynamic = try await Tool.runCapturing("/usr/bin/readelf", ["-d", lib]).stdout
        #expect(dynamic.contains("Library soname: [libkvcformat.so.0]"), "\(dynamic)")
        let needed = Set(dynamic.split(separator: "\n").filter { $0.contains("(NEEDED)") }
            .compactMap { $0.split(separator: "[").last?.split(separator: "]").first.map(String.init) })
        let allowed: Set<String> = ["libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libisal.so.2", "ld-linux-x86-64.so.2"]
        #expect(needed.isSubset(of: allowed) && needed.contains("libc.so.6"), "NEEDED: \(needed.sorted())")
        // Global definitions in the dynamic symbol table, without their version suffix.
        let nm = try await Tool.runCapturing("/usr/bin/nm", ["-D", "--defined-only", lib]).stdout
        var symbols: Set<String> = []
        for line in nm.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count == 3, f[1] != "A", f[1].uppercased() == f[1] else { continue }
            symbols.insert(String(f[2].split(separator: "@")[0]))
        }
        let declared = try Self.headerFunctions()
        #expect(declared.count == 21, "\(declared.sorted())")
        let extra = symbols.subtracting(declared).sorted(), missing = declared.subtracting(symbols).sorted()
        #expect(symbols == declared, "exported but not in kvc.h: \(extra); declared but not exported: \(missing)")
        let map = try String(contentsOfFile: Self.packageRoot + "/packaging/libkvcformat/libkvcformat.map", encoding: .utf8)
        let listed = Set(map.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { $0.hasPrefix("kvc_") && $0.hasSuffix(";") }.map { String($0.dropLast()) })
        #expect(listed == declared, "the version script and kvc.h disagree")
        let symbolsFile = try String(contentsOfFile: Self.packageRoot + "/debian/libkvcformat0.symbols", encoding: .utf8)
        let packaged = Set(symbolsFile.split(separator: "\n").dropFirst().compactMap { $0.split(separator: "@").first }
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { $0.hasPrefix("kvc_") })
        #expect(packaged == declared, "debian/libkvcformat0.symbols and kvc.h disagree")
        let pc = try await String(contentsOfFile: Self.libraryTree() + "/lib/pkgconfig/kvcformat.pc", encoding: .utf8)
        #expect(pc.contains("Libs: -L${libdir} -lkvcformat") && pc.contains("Cflags: -I${includedir}"), "\(pc)")
    }

    @Test func manPage_documentsEveryFunctionOfKvcH() async throws {
        let page = try String(contentsOfFile: Self.packageRoot + "/man/kvc.h.3", encoding: .utf8)
            .replacingOccurrences(of: "\\-", with: "-")
        let synopsis = page.components(separatedBy: ".SH DESCRIPTION")[0]
        let description = page.components(separatedBy: ".SH DESCRIPTION")[1]
        for f in try Self.headerFunctions() {
            #expect(synopsis.contains(f + "("), "\(f) is not in kvc.h(3)'s SYNOPSIS")
            #expect(description.contains(".B " + f), "\(f) is not described in kvc.h(3)")
        }
        let guide = try String(contentsOfFile: Self.packageRoot + "/docs/ENGINE.md", encoding: .utf8)
        for f in ["kvc_cache_open", "kvc_find_prefix", "kvc_load", "kvc_touch", "kvc_stat", "kvc_rewrite_tool_map",
                  "kvc_plan_eviction", "kvc_store_stream", "kvc_cache_close"] {
            #expect(guide.contains(f + "("), "docs/ENGINE.md does not show \(f)")
        }
    }

    /// kvc-engine-c's "stored NAME vN" lines.
    static func stored(_ output: String) -> [(name: String, version: Int)] {
        output.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard f.count == 3, f[0] == "stored", let v = Int(f[2].dropFirst()) else { return nil }
            return (String(f[1]), v)
        }
    }

    @Test func cEngine_besideARealDaemon_keepsEveryFile_findsEveryCorruption_andRefusesDamageOnLoad() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        let engine = try await Self.compile("Examples/c-engine/kvc-engine-c.c", into: root.path)
        // Phase 1: the C engine works (restore, touch, tool-map rewrites in place, store) while the
        // daemon scrubs flat out and verifies every arrival at once. No locks on either side.
        var d: DaemonProcess? = try await DaemonProcess(root: root, extra: [
            "--budget-mb", "0", "--scrub-rate-mbps", "0", "--scrub-interval-hours", "0.0003", "--scrub-new-file-delay", "0",
            "--removal-settle-seconds", "0.5"], cacheDir: cache)
        let run = try await Self.runC(engine, [cache, "run", "--steps", "80", "--seed", "5", "--payload-bytes", "131072",
                                         "--conversations", "5", "--tool-rewrite-every", "2", "--v1-every", "3"])
        #expect(run.status == 0, "\(run.stderr)")
        let stored = Self.stored(run.stdout)
        let summary = run.stdout.split(separator: "\n").last.map(String.init) ?? ""
        #expect(stored.count == 80 && summary.contains("refused=0"), "\(summary)")
        let touched = run.stdout.split(separator: "\n").filter { $0.hasPrefix("touched ") }.count
        let rewrote = run.stdout.split(separator: "\n").filter { $0.hasPrefix("rewrote ") }.count
        #expect(touched >= 40 && rewrote >= 20, "the workload rewrote files in place: \(summary)")
        let names = stored.map(\.name)
        #expect(Set(names).count == 80 && stored.filter { $0.version == 1 }.count >= 20)
        #expect(checkpoints(in: cache) == Set(names), "the engine's files are all there and nothing else")
        try await waitUntil("every file indexed", timeout: 30, daemon: d!) { try d!.status().files == 80 }
        for v in try d!.scrubNow(names) {
            #expect(v.verdict == .ok && v.action == "kept", "\(v.file): \(v.verdict) \(v.action) \(v.problems)")
        }
        // v1 files get their checksums recorded on the daemon's first verification: wait for all of them.
        try await waitUntil("every v1 file recorded", timeout: 60, daemon: d!) { try d!.status().checksums?.notYetRecorded == 0 }
        var status = try d!.status()
        #expect(status.counters.corruptRemoved == 0 && status.counters.corruptFound == 0 && status.pendingRemovals == 0)
        #expect(status.checksums == StatusReport.Checksums(inFile: 80 - stored.filter { $0.version == 1 }.count,
                                                          recorded: stored.filter { $0.version == 1 }.count, notYetRecorded: 0))
        _ = await d!.stop()
        d = nil

        // Phase 2: damage, with the daemon stopped, one file per region; then the C engine loads everything.
        let v2 = stored.filter { $0.version == 2 }.map(\.name), v1 = stored.filter { $0.version == 1 }.map(\.name)
        func size(_ n: String) throws -> Int { Int(try FileStatus.of(path: cache + "/" + n).size) }
        func textBytes(_ n: String) throws -> Int {
            Int(try #require(try CacheEntry.read(path: cache + "/" + n).header).textBytes)
        }
        var refusable: [String: String] = [:]
        flipByte(cache + "/" + v2[0], at: 9); refusable[v2[0]] = "header"
        flipByte(cache + "/" + v2[1], at: 68 + 3); refusable[v2[1]] = "text"
        flipByte(cache + "/" + v2[2], at: 68 + (try textBytes(v2[2])) + 65_000); refusable[v2[2]] = "payload"
        flipByte(cache + "/" + v2[3], at: try size(v2[3]) - 1); refusable[v2[3]] = "trailer"
        #expect(truncate(cache + "/" + v1[0], off_t(try size(v1[0]) - 5000)) == 0); refusable[v1[0]] = "size"
        flipByte(cache + "/" + v1[1], at: 52 + 2); refusable[v1[1]] = "text (v1: the name's SHA-1)"
        // A v1 payload carries no checksum: no loader can see this one, only the daemon's record.
        let v1PayloadFlip = v1[2]
        flipByte(cache + "/" + v1PayloadFlip, at: 52 + (try textBytes(v1PayloadFlip)) + 70_000)
        let load = try await Self.runC(engine, [cache, "load"] + names)
        #expect(load.status == 1)
        let lines = load.stdout.split(separator: "\n").map(String.init)
        let refused = Set(lines.filter { $0.hasPrefix("refused ") }.map { String($0.split(separator: " ")[1]) })
        #expect(refused == Set(refusable.keys), "refused \(refused.sorted()); damaged \(refusable)\n\(lines.filter { $0.hasPrefix("refused") })")
        let loaded = Set(lines.filter { $0.hasPrefix("ok ") }.map { String($0.split(separator: " ")[1]) })
        #expect(loaded == Set(names).subtracting(refusable.keys), "every other file loads verified")
        #expect(loaded.contains(v1PayloadFlip), "v1 has no CRC: the engine cannot see a payload flip")

        // Phase 3: the daemon again (its recorded checksums kept): it finds every damaged file and removes
        // only those, the v1 payload flip included, by the record it made in phase 1.
        let damaged = Set(refusable.keys).union([v1PayloadFlip])
        let d2 = try await DaemonProcess(root: root, extra: [
            "--budget-mb", "0", "--scrub-rate-mbps", "0", "--scrub-new-file-delay", "0", "--removal-settle-seconds", "0.5",
            "--removal-brake", "50"], cacheDir: cache)
        let verdicts = try d2.scrubNow(names)
        for v in verdicts {
            let name = URL(fileURLWithPath: v.file).lastPathComponent
            #expect((v.verdict == .corrupt) == damaged.contains(name) || v.verdict == .missing, "\(name): \(v.verdict) \(v.problems)")
        }
        try await waitUntil("every damaged file removed", timeout: 60) {
            damaged.allSatisfy { !FileManager.default.fileExists(atPath: cache + "/" + $0) }
        }
        status = try d2.status()
        #expect(checkpoints(in: cache) == Set(names).subtracting(damaged), "only the damaged files went")
        #expect(status.counters.corruptRemoved == damaged.count, "\(status.counters)")
        let recordedFinding = d2.events("corrupt-removed").filter { $0["file"]?.hasSuffix(v1PayloadFlip) == true }
        #expect(!recordedFinding.isEmpty, "the v1 payload flip was removed by the daemon")
        print("C engine beside the daemon: \(summary); damaged \(damaged.count) (\(refusable.count) refused by the C loader, " +
              "1 v1 payload flip only the daemon's record sees), \(status.counters.corruptRemoved) removed, \(80 - damaged.count) kept")
    }
}
