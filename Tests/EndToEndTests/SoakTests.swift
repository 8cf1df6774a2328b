import Foundation
import Testing
import KVCFormat
import KVScrubDaemon
#if canImport(Glibc)
import Glibc
#endif

/// The daemon and two engine simulators (one writing v1, one v2) on one
/// directory, for real, while the test damages files in every region:
/// every damaged file must be removed, no good file ever, and the budget
/// must hold. KVSCRUBD_SOAK_SECONDS sets the length (default 45 s, for CI);
/// a long soak is e.g. KVSCRUBD_SOAK_SECONDS=3600 swift test --filter SoakTests.
@Suite(.serialized) struct SoakTests {
    static var seconds: Double { Double(ProcessInfo.processInfo.environment["KVSCRUBD_SOAK_SECONDS"] ?? "") ?? 45 }

    @Test func daemonAndEngines_underInjectedCorruption_neverLoseAGoodFile() async throws {
        let root = TempDir()
        let budgetMB = 24
        let d = try await DaemonProcess(root: root, extra: [
            "--budget-mb", "\(budgetMB)", "--scrub-interval-hours", "0.003", "--scrub-rate-mbps", "0",
            "--scrub-new-file-delay", "0.5", "--evict-interval", "2"])
        var engines: [Process] = []
        for (i, format) in ["v1", "v2"].enumerated() {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Tool.binDir + "/kvc-engine-sim")
            // One engine generation per directory, as in the field: PR #146's upstream engine writes v1 and v2.
            p.arguments = ["run", "--dir", d.cache, "--format", format, "--generation", "pr146", "--duration", "\(Self.seconds)", "--rate", "25",
                           "--payload-bytes", "\(384 << 10)", "--seed", "\(i + 1)", "--conversations", "6",
                           "--log", root.file("engine-\(format).log")]
            p.standardOutput = FileHandle(forWritingAtPath: { _ = FileManager.default.createFile(atPath: root.file("engine-\(format).out"), contents: nil); return root.file("engine-\(format).out") }())
            p.standardError = FileHandle.nullDevice
            try p.run()
            engines.append(p)
        }
        defer { for p in engines where p.isRunning { p.terminate() } }

        // Damage files as the engines work, one region at a time, both versions.
        var injected: [String: String] = [:] // name -> region
        var maxOverBudgetStreak = 0.0
        var overSince: Date? = nil
        let start = Date()
        var rng = SystemRandomNumberGenerator()
        let regions = ["header", "text", "payload", "trailer", "size"]
        var k = 0
        while Date().timeIntervalSince(start) < Self.seconds {
            try await Task.sleep(for: .milliseconds(250))
            // Budget: total bytes over budget only briefly (one evaluation).
            let total = directoryBytes(d.cache)
            if total > UInt64(budgetMB) << 20 {
                overSince = overSince ?? Date()
                maxOverBudgetStreak = max(maxOverBudgetStreak, Date().timeIntervalSince(overSince!))
            } else {
                overSince = nil
            }
            k += 1
            if k % 6 != 0 { continue }
            let names = Array(checkpoints(in: d.cache)).filter { injected[$0] == nil }
            guard let victim = names.randomElement(using: &rng) else { continue }
            let region = regions[(k / 6) % regions.count]
            if inject(region, into: d.cache + "/" + victim) { injected[victim] = region }
        }
        for p in engines { await p.exited() }
        // Let the daemon finish: a pass comes every ~11 s.
        // A damaged file is removed, or healed by the engine itself (a tool-map
        // rewrite replaces a damaged trailer, and a store renames a fresh file
        // over the name): either way, none may stay corrupt.
        // Judged as the engine in force (both engines are PR #146's), as the daemon judges: without a
        // generation, the rules that hold only within one (v1 tokens 0, a payload magic) do not apply,
        // and a file still waiting for its removal would look settled.
        func stillCorrupt() -> [String] {
            injected.keys.filter { name in
                guard FileManager.default.fileExists(atPath: d.cache + "/" + name) else { return false }
                return (try? Verifier(engine: .pr146).verify(path: d.cache + "/" + name))?.verdict == .corrupt
            }
        }
        do {
            try await waitUntil("every injected file removed or healed", timeout: 40) { stillCorrupt().isEmpty }
        } catch {
            Issue.record("still corrupt: \(stillCorrupt().map { "\($0) (\(injected[$0]!))" })")
        }

        // Stop the daemon first: the log and the directory are then read in one final
        // state (a timer eviction between reading the log and listing the files would
        // otherwise look like a file vanishing without a logged removal).
        let s = await d.stop()
        #expect(s.status == 0)
        let removedCorrupt = Set(d.events("corrupt-removed").compactMap { $0["file"] })
        // PR #146's engine unlinks a v2 file that fails a load: damage it found first is gone by its hand.
        let evictedByDaemon = Set(d.events("evicted").compactMap { $0["file"] })
        let evicted = evictedByDaemon.union(engineUnlinked(root.file("engine-v1.log")) + engineUnlinked(root.file("engine-v2.log")))
        // No good file is ever removed as corrupt.
        #expect(removedCorrupt.isSubset(of: Set(injected.keys)), "removed as corrupt but never damaged: \(removedCorrupt.subtracting(injected.keys))")
        // Every damaged file is gone: removed as corrupt, or evicted by policy first.
        var healed = 0
        for (name, _) in injected {
            if FileManager.default.fileExists(atPath: d.cache + "/" + name) { healed += 1; continue }
            #expect(removedCorrupt.contains(name) || evicted.contains(name), "\(name) vanished without a logged removal")
        }
        #expect(healed < injected.count, "most damage must have been found and removed, not healed")
        // Every file that vanished was removed by the daemon, by policy or as corrupt (the engines here do not evict).
        let stored = Set(engineStored(root.file("engine-v1.log")) + engineStored(root.file("engine-v2.log")))
        let gone = stored.subtracting(checkpoints(in: d.cache))
        #expect(gone.isSubset(of: removedCorrupt.union(evicted)), "vanished without a logged removal: \(gone.subtracting(removedCorrupt.union(evicted)))")
        #expect(maxOverBudgetStreak < 5, "over budget for \(maxOverBudgetStreak) s in a row")
        #expect(injected.count >= 5, "the soak must really have injected damage")
        #expect(!evictedByDaemon.isEmpty, "the budget must really have been under pressure")
        // The engines' own summaries: no errors, and each did real work.
        for f in ["engine-v1.out", "engine-v2.out"] {
            let j = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root.file(f)))) as? [String: Any]
            #expect((j?["errors"] as? [Any])?.isEmpty == true, "\(f): \(String(describing: j?["errors"]))")
            #expect((j?["stores"] as? Int ?? 0) > 20)
        }
        let final = try await Tool.run("kvscrubd", ["verify", "--json", d.cache])
        #expect(((final.json as? [String: Any])?["summary"] as? [String: Int])?["corrupt"] == 0, "\(final.stdout.prefix(2000))")
    }

    /// Damages one region in place; false when the file vanished first.
    func inject(_ region: String, into path: String) -> Bool {
        guard let data = FileManager.default.contents(atPath: path), data.count > 200 else { return false }
        var b = Array(data)
        guard case .header(let h) = KVCHeader.probe(b), let end = h.bodyEnd, Int(end) <= b.count else { return false }
        let text = h.prologueSize
        let payload = text + Int(h.textBytes)
        switch region {
        case "header": // v2: any bit (CRC); v1: the token count, which the structure check sees
            if h.version == 2 { b[14] ^= 0x10 } else { b[8] = 0; b[9] = 0; b[10] = 0; b[11] = 0 }
        case "text": b[text + 3] ^= 0x01
        case "payload": // v2: a tensor byte (CRC); v1: the payload magic (no CRC to catch a tensor byte)
            if h.version == 2 { b[payload + Int(h.payloadBytes) / 2] ^= 0x01 } else { b[payload] ^= 0x01 }
        case "trailer":
            guard h.hasToolMap, b.count > Int(end) + 4 else { b.removeLast(min(500, b.count - payload - 60)); break }
            b[Int(end) + 5] = 0xFF // entry count: the map no longer parses
        default: // size: truncated inside the payload
            b.removeLast(b.count - (payload + Int(h.payloadBytes) / 2))
        }
        let fd = open(path, O_WRONLY | O_TRUNC)
        guard fd >= 0 else { return false }
        _ = b.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        return true
    }

    func directoryBytes(_ dir: String) -> UInt64 {
        checkpoints(in: dir).reduce(0) { sum, name in
            sum + UInt64(((try? FileManager.default.attributesOfItem(atPath: dir + "/" + name))?[.size] as? NSNumber)?.uint64Value ?? 0)
        }
    }

    func engineUnlinked(_ log: String) -> [String] { engineOps(log, "engine-unlink-corrupt") }

    func engineStored(_ log: String) -> [String] { engineOps(log, "store") }

    func engineOps(_ log: String, _ op: String) -> [String] {
        ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
            guard let j = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], j["op"] as? String == op,
                  let p = j["path"] as? String else { return nil }
            return String(p.split(separator: "/").last!)
        }
    }
}
