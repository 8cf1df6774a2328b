import Foundation
import Testing
import KVCFormat

/// `kvscrubd verify|inspect|evict` and `kvc-engine-sim` as real processes on real files.
@Suite struct OfflineCLITests {
    func sim(_ args: [String]) async throws -> String {
        let r = try await Tool.run("kvc-engine-sim", args)
        #expect(r.status == 0, "kvc-engine-sim \(args): \(r.stderr)")
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func store(_ dir: String, _ extra: [String] = []) async throws -> String {
        try await sim(["store", "--dir", dir, "--payload-bytes", "20000"] + extra)
    }

    @Test func verify_cleanDirectory_exits0_andJSONHasTheDocumentedShape() async throws {
        let d = TempDir()
        // One engine writes a directory: PR #146's upstream engine, v2 and v1 files alike (bytes 7 and 20 zero).
        let v2 = try await store(d.path, ["--seed", "1", "--tool-map", "2"])
        let v1 = try await store(d.path, ["--seed", "2", "--format", "v1", "--generation", "pr146"])
        try Data("x".utf8).write(to: URL(fileURLWithPath: d.file("README")))
        let r = try await Tool.run("kvscrubd", ["verify", "--json", d.path])
        #expect(r.status == 0, "\(r.stderr)")
        let j = try #require(r.json as? [String: Any])
        let files = try #require(j["files"] as? [[String: Any]])
        #expect(files.count == 3)
        let byPath = Dictionary(uniqueKeysWithValues: files.map { ($0["path"] as! String, $0) })
        #expect(byPath[v2]?["verdict"] as? String == "ok")
        #expect(byPath[v2]?["checksums"] as? String == "crc32c")
        #expect(byPath[v2]?["version"] as? Int == 2)
        #expect(byPath[v1]?["checksums"] as? String == "none")
        #expect(byPath[v1]?["version"] as? Int == 1)
        #expect(byPath[d.file("README")]?["verdict"] as? String == "ignored")
        for f in files {
            for key in ["path", "name", "verdict", "checksums", "problems"] { #expect(f[key] != nil, "missing \(key)") }
        }
        let s = try #require(j["summary"] as? [String: Int])
        #expect(s == ["ok": 2, "corrupt": 0, "incompatible": 0, "ignored": 1])
        let abi = try #require(j["engine_abi"] as? [String: Any])
        let g = abi["generation"] as? [String: Any]
        // PR #146 writes ABI 0 and payload version 1, and reads v1 and v2 alike.
        #expect(g?["payloadAbi"] as? Int == 0 && g?["payloadVersion"] as? Int == 1 && g?["fileVersion"] as? Int == 2, "\(abi)")
        #expect(abi["source"] as? String == "newest checkpoint")
    }

    @Test func verify_engineABI_decidesWhichGenerationIsIncompatible_neverCorrupt() async throws {
        let d = TempDir()
        let pr146 = try await store(d.path, ["--seed", "1", "--created-at", "1000"])
        let kvstore = try await store(d.path, ["--seed", "2", "--format", "v1", "--created-at", "2000"])
        // auto: the newest checkpoint (the kvstore one) says ABI 2, so the PR #146 file is incompatible.
        var r = try await Tool.run("kvscrubd", ["verify", "--json", d.path])
        #expect(r.status == 0, "\(r.stderr)")
        var byPath = Dictionary(uniqueKeysWithValues: ((r.json as? [String: Any])?["files"] as? [[String: Any]] ?? []).map { ($0["path"] as! String, $0) })
        #expect(byPath[pr146]?["verdict"] as? String == "incompatible")
        #expect(byPath[kvstore]?["verdict"] as? String == "ok")
        // --engine-abi 0: the other way round.
        r = try await Tool.run("kvscrubd", ["verify", "--json", "--engine-abi", "0", d.path])
        byPath = Dictionary(uniqueKeysWithValues: ((r.json as? [String: Any])?["files"] as? [[String: Any]] ?? []).map { ($0["path"] as! String, $0) })
        #expect(byPath[pr146]?["verdict"] as? String == "ok")
        #expect(byPath[kvstore]?["verdict"] as? String == "incompatible")
        #expect(((r.json as? [String: Any])?["engine_abi"] as? [String: Any])?["source"] as? String == "configured")
        let bad = try await Tool.run("kvscrubd", ["verify", "--engine-abi", "two", d.path])
        #expect(bad.status == 2 && bad.stderr.contains("--engine-abi"))
    }

    @Test func verify_corruptFile_exits1_andNamesRegionAndCRCs() async throws {
        let d = TempDir()
        let p = try await store(d.path)
        flipByte(p, at: 68 + 4096 + 500) // inside the payload (text is 4096 bytes)
        let r = try await Tool.run("kvscrubd", ["verify", "--json", p])
        #expect(r.status == 1)
        let f = try #require(((r.json as? [String: Any])?["files"] as? [[String: Any]])?.first)
        #expect(f["verdict"] as? String == "corrupt")
        let problem = try #require((f["problems"] as? [[String: Any]])?.first)
        #expect(problem["region"] as? String == "payload")
        #expect((problem["detail"] as? String)?.contains("CRC") == true)
        #expect(problem["expected_crc"] as? String != problem["actual_crc"] as? String)
        // The human table says the same.
        let h = try await Tool.run("kvscrubd", ["verify", p])
        #expect(h.status == 1)
        #expect(h.stdout.contains("corrupt"))
        #expect(h.stdout.contains("payload: payload CRC mismatch (expected 0x"))
        #expect(h.stdout.contains("1 corrupt"))
        // Never modifies anything.
        #expect(FileManager.default.fileExists(atPath: p))
    }

    @Test func verify_v1_saysNoChecksumWasVerified() async throws {
        let d = TempDir()
        let p = try await store(d.path, ["--format", "v1"])
        let r = try await Tool.run("kvscrubd", ["verify", p])
        #expect(r.status == 0)
        #expect(r.stdout.contains("none (v1)"))
        #expect(!r.stdout.contains("crc32c"))
    }

    @Test func verify_unreadablePath_isAnErrorLine_andTheRestGoOn() async throws {
        let d = TempDir()
        let good = try await store(d.path)
        let r = try await Tool.run("kvscrubd", ["verify", d.file("missing-dir/x.kv"), good])
        #expect(r.status == 2)
        #expect(r.stderr.contains("missing-dir/x.kv"))
        #expect(r.stdout.contains("1 files: 1 ok"))
        // Corruption outranks an I/O error in the exit status.
        flipByte(good, at: 70)
        #expect(try await Tool.run("kvscrubd", ["verify", d.file("nope.kv"), good]).status == 1)
    }

    @Test func usageErrors_exit2_withAMessage() async throws {
        let r = try await Tool.run("kvscrubd", ["verify"])
        #expect(r.status == 2)
        #expect(r.stderr.contains("Usage") || r.stderr.contains("Missing"))
        #expect(try await Tool.run("kvscrubd", ["verify", "--bogus", "/tmp"]).status == 2)
        #expect(try await Tool.run("kvscrubd", ["evict", "--budget-mb", "0", "/tmp"]).status == 2)
        let help = try await Tool.run("kvscrubd", ["verify", "--help"])
        #expect(help.status == 0 && help.stdout.contains("--json"))
    }

    @Test func inspect_printsEveryHeaderFieldAndTheScore() async throws {
        let d = TempDir()
        let p = try await store(d.path, ["--reason", "shutdown", "--hits", "4", "--created-at", "1000", "--last-used", "2000",
                                   "--tokens", "100", "--model-id", "3", "--quant-bits", "2", "--ctx-size", "8192",
                                   "--generation", "kvstore"])
        let r = try await Tool.run("kvscrubd", ["inspect", "--json", "--now", "2000", p])
        #expect(r.status == 0, "\(r.stderr)")
        let e = try #require(((r.json as? [String: Any])?["entries"] as? [[String: Any]])?.first)
        #expect(e["reason"] as? String == "shutdown")
        #expect(e["hits"] as? Int == 4)
        #expect(e["tokens"] as? Int == 100)
        #expect(e["model_id"] as? Int == 3 && e["quant_bits"] as? Int == 2 && e["ctx_size"] as? Int == 8192)
        #expect(e["created_at"] as? Int == 1000 && e["last_used"] as? Int == 2000)
        #expect(e["payload_bytes"] as? Int == 20000 && e["text_bytes"] as? Int == 4096)
        #expect(e["payload_abi"] as? Int == 2 && e["version"] as? Int == 2 && e["ext_flags"] as? Int == 0)
        let size = try #require(e["file_size"] as? Int)
        #expect(size == 68 + 4096 + 20000)
        // (4 + 1) * 100 / size, doubled for the shutdown anchor.
        #expect(e["score"] as? Double == 5.0 * 100 / Double(size) * 2)
        let human = try await Tool.run("kvscrubd", ["inspect", "--now", "2000", p])
        for field in ["quant_bits:", "reason:", "ext_flags:", "payload_crc:", "header_crc:", "score:"] {
            #expect(human.stdout.contains(field), "\(field)")
        }
    }

    @Test func evict_dryRunListsVictimsInOrder_thenEvictRemovesExactlyThem() async throws {
        let d = TempDir()
        // Six files of 1 MiB plus 4 KiB of text; a 5 MiB budget keeps four. Hits make the order predictable.
        var paths: [String] = []
        for i in 0..<6 {
            await paths.append(try sim(["store", "--dir", d.path, "--payload-bytes", "\(1 << 20)", "--seed", "\(i)",
                                  "--reason", "continued", "--hits", "\(i)", "--created-at", "1000", "--last-used", "1000"]))
        }
        let dry = try await Tool.run("kvscrubd", ["evict", "--budget-mb", "5", "--dry-run", "--json", "--now", "1000", d.path])
        #expect(dry.status == 0, "\(dry.stderr)")
        let victims = try #require((dry.json as? [String: Any])?["victims"] as? [[String: Any]])
        #expect(victims.map { $0["path"] as? String } == [paths[0], paths[1]])
        #expect(try FileManager.default.contentsOfDirectory(atPath: d.path).count == 6)
        let real = try await Tool.run("kvscrubd", ["evict", "--budget-mb", "5", "--now", "1000", d.path])
        #expect(real.status == 0)
        #expect(!FileManager.default.fileExists(atPath: paths[0]) && !FileManager.default.fileExists(atPath: paths[1]))
        for p in paths[2...] { #expect(FileManager.default.fileExists(atPath: p)) }
        #expect(real.stdout.contains("2 victims"))
    }

    @Test func evict_neverTouchesNonCheckpoints() async throws {
        let d = TempDir()
        _ = try await store(d.path)
        let other = d.file("keep-me.bin")
        try Data(count: 3 << 20).write(to: URL(fileURLWithPath: other))
        let tmp = d.file(String(repeating: "a", count: 40) + ".kv.tmp.1")
        try Data(count: 3 << 20).write(to: URL(fileURLWithPath: tmp))
        let r = try await Tool.run("kvscrubd", ["evict", "--budget-mb", "1", d.path])
        #expect(r.status == 0)
        #expect(FileManager.default.fileExists(atPath: other))
        #expect(FileManager.default.fileExists(atPath: tmp))
    }

    @Test func sim_load_hitsVerifiesAndTouches_andRefusesACorruptFile() async throws {
        let d = TempDir()
        let text = d.file("prompt.txt")
        try Data("<|System|>be brief<|User|>hello".utf8).write(to: URL(fileURLWithPath: text))
        let p = try await store(d.path, ["--text-file", text])
        let r = try await Tool.run("kvc-engine-sim", ["load", "--dir", d.path, "--prompt", "<|System|>be brief<|User|>hello, and more"])
        #expect(r.status == 0, "\(r.stderr)")
        let j = try #require(r.json as? [String: Any])
        #expect(j["hit"] as? Bool == true)
        #expect(j["path"] as? String == p)
        #expect(j["checksums"] as? String == "crc32c")
        let inspect = try await Tool.run("kvscrubd", ["inspect", "--json", p])
        #expect(((inspect.json as? [String: Any])?["entries"] as? [[String: Any]])?.first?["hits"] as? Int == 1)
        let miss = try await Tool.run("kvc-engine-sim", ["load", "--dir", d.path, "--prompt", "something else"])
        #expect((miss.json as? [String: Any])?["hit"] as? Bool == false)
        flipByte(p, at: 68 + 40 + 300)
        let bad = try await Tool.run("kvc-engine-sim", ["load", "--dir", d.path, "--prompt", "<|System|>be brief<|User|>hello!"])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("refusing to load"))
        #expect(bad.stderr.contains("payload CRC mismatch"))
    }

    @Test func sim_run_producesAFileSetThatVerifies() async throws {
        let d = TempDir()
        let log = d.path + ".log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let r = try await Tool.run("kvc-engine-sim", ["run", "--dir", d.path, "--duration", "30", "--operations", "150", "--rate", "0",
                                                "--payload-bytes", "8192", "--seed", "9", "--log", log])
        #expect(r.status == 0, "\(r.stderr)")
        let s = try #require(r.json as? [String: Any])
        #expect((s["stores"] as? Int ?? 0) > 10)
        #expect((s["loads"] as? Int ?? 0) > 10)
        #expect((s["toolMapRewrites"] as? Int ?? 0) > 5)
        #expect((s["errors"] as? [Any])?.isEmpty == true)
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 150 - (s["misses"] as? Int ?? 0) + (s["misses"] as? Int ?? 0))
        let v = try await Tool.run("kvscrubd", ["verify", "--json", d.path])
        #expect(v.status == 0)
        let sum = try #require((v.json as? [String: Any])?["summary"] as? [String: Int])
        #expect(sum["corrupt"] == 0 && sum["ok"]! > 5)
    }

    /// The completion scripts the package ships come from the binary; bash's completes
    /// subcommands and their subcommands.
    @Test func bashCompletion_completesSubcommands() async throws {
        let script = try await Tool.run("kvscrubd", ["--generate-completion-script", "bash"])
        #expect(script.status == 0)
        let file = NSTemporaryDirectory() + "kvscrubd-completion-\(getpid()).bash"
        try script.stdout.write(toFile: file, atomically: true, encoding: .utf8)
        defer { unlink(file) }
        func complete(_ words: [String]) async throws -> [String] {
            let line = words.joined(separator: " ")
            let cmd = "source '\(file)'; COMP_WORDS=(\(words.joined(separator: " "))); COMP_CWORD=\(words.count - 1); "
                + "COMP_LINE='\(line)'; COMP_POINT=\(line.count); _kvscrubd kvscrubd \(words.last!) 2>/dev/null; echo \"${COMPREPLY[*]}\""
            return try await Tool.runCapturing("/bin/bash", ["-c", cmd]).stdout.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        }
        await #expect(try complete(["kvscrubd", "hist"]) == ["history"])
        await #expect(Set(try complete(["kvscrubd", "scrub", "st"])) == ["start", "status"])
        for shell in ["zsh", "fish"] {
            let r = try await Tool.run("kvscrubd", ["--generate-completion-script", shell])
            #expect(r.status == 0 && r.stdout.contains("history"), "\(shell)")
        }
    }
}
