import Foundation
import Testing
import KVCFormat
import KVScrubDaemon

/// The CLI as an operator's scripts and terminal meet it, against a real
/// daemon: `scrub start --wait` / `scrub wait` (progress, exit status by what
/// the pass found, cancellation), progress on a real pseudo-terminal
/// (script(1)), `verify --quiet`, structured `--json` for every changing
/// command and JSON errors, and evictions at info with a notice summary.
@Suite(.serialized) struct OperatorCLITests {
    /// A cache of `count` v2 files of `payload` bytes, plus one whose payload is damaged when `corrupt`.
    static func cache(_ count: Int, payload: UInt64, corrupt: Bool) throws -> (TempDir, String, String?) {
        let (root, cache, _) = try OperateTests.cacheWith(count, payload: payload)
        guard corrupt else { return (root, cache, nil) }
        let bad = try Damage.store(cache, version: 2, seed: 777, payload: payload)
        Damage.edit(bad) { $0[$0.count - 100] ^= 0x10 }
        return (root, cache, String(bad.split(separator: "/").last!))
    }

    /// Waits until the start-up pass is over, so `scrub start` is not refused.
    static func waitForFirstPass(_ d: DaemonProcess) async throws {
        try await waitUntil("the first pass to end", timeout: 60, daemon: d) { try d.status().scrub.lastPass != nil && !d.status().scrub.active }
    }

    @Test func scrubStartWait_followsThePass_andExits1WhenItFoundCorruption() async throws {
        // --dry-run keeps the corrupt file, so every pass finds it again.
        let (root, cache, bad) = try Self.cache(6, payload: 2 << 20, corrupt: true)
        let d = try await DaemonProcess(root: root, extra: ["--dry-run", "--scrub-rate-mbps", "8", "--budget-mb", "0"])
        let sock = ["--socket", d.socket]
        try await Self.waitForFirstPass(d)

        let r = try await Tool.run("kvscrubd", ["scrub", "start", "--wait"] + sock)
        #expect(r.status == 1, "\(r.stdout)\n\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first?.hasPrefix("scrub pass started over 7 files") == true, "\(r.stdout)")
        // Not a terminal: plain lines, one per tenth of the pass (at least the start and one more), no escape codes.
        let steps = lines.filter { $0.hasPrefix("scrub ") && $0.contains("%: ") && $0.hasSuffix(" corrupt") }
        #expect(steps.count >= 2, "\(r.stdout)")
        #expect(!r.stdout.contains("\u{1B}["), "escape codes on a pipe")
        #expect(lines.contains { $0.hasPrefix("scrub pass completed in ") && $0.contains(": 7 files, ") && $0.contains(", 1 found corrupt, 1 confirmed, 0 removed, 0 kept") }, "\(r.stdout)")
        #expect(r.stdout.contains("kvscrubd history --cause corrupt"))
        #expect(FileManager.default.fileExists(atPath: cache + "/" + bad!), "dry run removed a file")

        // Nothing running: returns at once, 0, and names the last pass.
        let idle = try await Tool.run("kvscrubd", ["scrub", "wait"] + sock)
        #expect(idle.status == 0 && idle.stdout.hasPrefix("no scrub pass is running; the last one completed in "), "\(idle.stdout)")

        // --json: one object when it ends, nothing else on stdout.
        let j = try await Tool.run("kvscrubd", ["scrub", "start", "--wait", "--json"] + sock)
        #expect(j.status == 1)
        let o = j.json as? [String: Any] ?? [:]
        let pass = o["pass"] as? [String: Any] ?? [:]
        #expect(o["ok"] as? Bool == false && o["outcome"] as? String == "completed", "\(j.stdout)")
        #expect(pass["corrupt_found"] as? Int == 1 && pass["files"] as? Int == 7 && pass["removed"] as? Int == 0, "\(j.stdout)")
        _ = await d.stop()
    }

    /// A pass ends before the second look at what it found (the file must first be left alone for
    /// the settle time): --wait waits for that look, exits 1 when it confirms the damage, and says so.
    @Test func scrubStartWait_waitsForTheSecondLooks_ofWhatThePassFound_andExits1WhenConfirmed() async throws {
        let (root, cache, _) = try Self.cache(6, payload: 256 << 10, corrupt: false)
        let d = try await DaemonProcess(root: root, extra: ["--scrub-rate-mbps", "0", "--budget-mb", "0", "--scrub-new-file-delay", "3600",
                                                      "--removal-settle-seconds", "3"])
        let sock = ["--socket", d.socket]
        try await Self.waitForFirstPass(d)
        // Damaged in place while the daemon runs: its arrival check is an hour away, so the pass finds it.
        let victim = try #require(checkpoints(in: cache).sorted().first)
        Damage.edit(cache + "/" + victim) { $0[$0.count / 2] ^= 0x10 } // inside the payload
        let r = try await Tool.run("kvscrubd", ["scrub", "start", "--wait"] + sock)
        #expect(r.status == 1, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("waiting for the second look at 1 file it found corrupt"), "\(r.stdout)")
        #expect(r.stdout.contains(", 1 found corrupt, 1 confirmed, 1 removed, 0 kept"), "\(r.stdout)")
        #expect(!FileManager.default.fileExists(atPath: cache + "/" + victim))
        let last = try #require(try d.status().scrub.lastPass)
        #expect(last.suspected == 1 && last.corruptFound == 1 && last.removed == 1 && last.pendingSecondLooks == 0)
        _ = await d.stop()
    }

    @Test func scrubWait_onATerminal_rewritesOneLine_andExits0OnACleanPass() async throws {
        let (root, _, _) = try Self.cache(6, payload: 2 << 20, corrupt: false)
        let d = try await DaemonProcess(root: root, extra: ["--scrub-rate-mbps", "8", "--budget-mb", "0"])
        try await Self.waitForFirstPass(d)
        // script(1) gives the command a real pseudo-terminal; -e passes its exit status on.
        let command = "\(Tool.binDir)/kvscrubd scrub start --wait --socket \(d.socket)"
        let r = try await Tool.runCapturing("/usr/bin/script", ["-qec", command, "/dev/null"])
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("\r\u{1B}[Kscrub "), "no progress line rewritten in place: \(r.stdout.debugDescription)")
        #expect(r.stdout.contains("scrub pass completed in ") && r.stdout.contains(", 0 found corrupt, 0 confirmed, 0 removed, 0 kept"), "\(r.stdout)")
        _ = await d.stop()
    }

    @Test func scrubWait_exits3_whenThePassIsCancelled() async throws {
        let (root, _, _) = try Self.cache(6, payload: 2 << 20, corrupt: false)
        // 2 MB/s over ~12.6 MB: about 6 s, time enough to cancel it.
        let d = try await DaemonProcess(root: root, extra: ["--scrub-rate-mbps", "2", "--budget-mb", "0"])
        try await waitUntil("a pass running", timeout: 20, daemon: d) { try d.status().scrub.active }
        let waiter = Process()
        waiter.executableURL = URL(fileURLWithPath: Tool.binDir + "/kvscrubd")
        waiter.arguments = ["scrub", "wait", "--socket", d.socket]
        let out = Pipe()
        waiter.standardOutput = out
        try waiter.run()
        // The waiter has seen the pass running once it printed its first progress line.
        let handle = out.fileHandleForReading
        var seen = Data()
        while !String(decoding: seen, as: UTF8.self).contains("\n") {
            let chunk = handle.availableData
            if chunk.isEmpty { break }
            seen += chunk
        }
        #expect(String(decoding: seen, as: UTF8.self).hasPrefix("scrub "), "\(String(decoding: seen, as: UTF8.self))")
        #expect(try await Tool.run("kvscrubd", ["scrub", "cancel", "--socket", d.socket]).status == 0)
        seen += handle.readDataToEndOfFile()
        await waiter.exited()
        #expect(waiter.terminationStatus == 3)
        #expect(String(decoding: seen, as: UTF8.self).contains("the scrub pass was cancelled before it ended"))
        _ = await d.stop()
    }

    @Test func changingCommands_answerStructuredJSON_andErrorsAreJSONToo() async throws {
        let (root, _, _) = try Self.cache(4, payload: 256 << 10, corrupt: false)
        let d = try await DaemonProcess(root: root, extra: ["--scrub-rate-mbps", "1", "--budget-mb", "0"])
        let sock = ["--socket", d.socket, "--json"]
        try await waitUntil("a pass running", timeout: 20, daemon: d) { try d.status().scrub.active }

        let pause = try await Tool.run("kvscrubd", ["scrub", "pause"] + sock)
        let p = pause.json as? [String: Any] ?? [:]
        let ps = (p["outcome"] as? [String: Any])?["scrub"] as? [String: Any] ?? [:]
        #expect(pause.status == 0 && p["ok"] as? Bool == true && ps["paused"] as? Bool == true && ps["files_total"] as? Int == 4, "\(pause.stdout)")

        let cancel = try await Tool.run("kvscrubd", ["scrub", "cancel"] + sock)
        let cs = ((cancel.json as? [String: Any])?["outcome"] as? [String: Any])?["scrub"] as? [String: Any] ?? [:]
        #expect(cancel.status == 0 && cs["active"] as? Bool == false && cs["last_cancelled_at"] is Double, "\(cancel.stdout)")

        // A refusal: exit 1, the reason on stderr, and a JSON object on stdout.
        let again = try await Tool.run("kvscrubd", ["scrub", "cancel"] + sock)
        let a = again.json as? [String: Any] ?? [:]
        #expect(again.status == 1 && a["ok"] as? Bool == false && a["exit_status"] as? Int == 1, "\(again.stdout)")
        #expect((a["error"] as? String)?.contains("no scrub pass is running") == true && again.stderr.contains("no scrub pass is running"))

        let evict = try await Tool.run("kvscrubd", ["evict-now"] + sock)
        let e = ((evict.json as? [String: Any])?["outcome"] as? [String: Any])?["eviction"] as? [String: Any] ?? [:]
        #expect(evict.status == 0 && e["evicted_files"] as? Int == 0 && e["files"] as? Int == 4 && (e["bytes"] as? Int ?? 0) > 4 * (256 << 10)
                && e["budget_bytes"] as? Int == 0, "\(evict.stdout)")

        let brake = try await Tool.run("kvscrubd", ["brake", "release"] + sock)
        let b = ((brake.json as? [String: Any])?["outcome"] as? [String: Any])?["brake"] as? [String: Any] ?? [:]
        #expect(brake.status == 0 && b["engaged"] as? Bool == false, "\(brake.stdout)")

        _ = await d.stop()
        // No daemon: exit 2, and still JSON on stdout.
        let gone = try await Tool.run("kvscrubd", ["status"] + sock)
        let g = gone.json as? [String: Any] ?? [:]
        #expect(gone.status == 2 && g["ok"] as? Bool == false && g["exit_status"] as? Int == 2 && (g["error"] as? String)?.isEmpty == false, "\(gone.stdout)")
    }

    @Test func reload_json_namesTheSettingsKeptUntilRestart() async throws {
        let (root, cache, _) = try Self.cache(1, payload: 64 << 10, corrupt: false)
        let conf = root.file("k.conf")
        // cache_dir, the socket and the state directory come from flags (which win); socket_mode from the file.
        try "budget_mb: 0\nsocket_mode: 0660\n".write(toFile: conf, atomically: true, encoding: .utf8)
        let d = try await DaemonProcess(root: root, extra: ["--config", conf])
        try "budget_mb: 5\nsocket_mode: 0600\n".write(toFile: conf, atomically: true, encoding: .utf8)
        let r = try await Tool.run("kvscrubd", ["reload", "--json", "--socket", d.socket])
        let reload = ((r.json as? [String: Any])?["outcome"] as? [String: Any])?["reload"] as? [String: Any] ?? [:]
        #expect(r.status == 0 && reload["kept_until_restart"] as? [String] == ["socket_mode"], "\(r.stdout)")
        #expect((r.json as? [String: Any])?["message"] as? String == "configuration reloaded; socket_mode change only on restart (kept as they were)")
        _ = cache
        #expect(try d.status().budgetBytes == 5 << 20)
        _ = await d.stop()
    }

    @Test func verifyQuiet_printsOnlyTheProblems_andProgressGoesToATerminalOnly() async throws {
        let (root, cache, bad) = try Self.cache(5, payload: 64 << 10, corrupt: true)
        defer { withExtendedLifetime(root) {} }
        let quiet = try await Tool.run("kvscrubd", ["verify", "--quiet", cache])
        #expect(quiet.status == 1)
        let lines = quiet.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("corrupt") == true && lines.first?.hasSuffix(bad!) == true, "\(quiet.stdout)")
        #expect(!quiet.stdout.contains("ok ") && !quiet.stdout.contains("engine payload ABI") && !quiet.stdout.contains("files:"), "\(quiet.stdout)")
        #expect(quiet.stderr.isEmpty, "progress on a pipe: \(quiet.stderr.debugDescription)")

        let clean = try await Tool.run("kvscrubd", ["verify", "-q", cache + "/" + (try OperateTests.fill(cache, count: 1, payload: 64 << 10, seedBase: 50))[0]])
        #expect(clean.status == 0 && clean.stdout.isEmpty, "\(clean.stdout)")

        // On a terminal (script(1)): a progress line on stderr, rewritten in place.
        let tty = try await Tool.runCapturing("/usr/bin/script", ["-qec", "\(Tool.binDir)/kvscrubd verify \(cache)", "/dev/null"])
        #expect(tty.status == 1)
        #expect(tty.stdout.contains("\r\u{1B}[Kverifying 1 of 7 files"), "\(tty.stdout.debugDescription)")
    }

    /// The summary ten minutes later is `EvictionSummaryTests`, in simulated time.
    @Test func evictions_logAtInfo() async throws {
        let (root, _, _) = try Self.cache(8, payload: 512 << 10, corrupt: false)
        // About 4.2 MB of checkpoints against a 2 MiB budget: several evictions at once.
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "2", "--scrub-rate-mbps", "0"])
        try await waitUntil("the budget kept", timeout: 20, daemon: d) { try d.status().bytes <= 2 << 20 }
        let evicted = d.events("evicted")
        #expect(evicted.count >= 3)
        let evictedLines = d.log.split(separator: "\n").filter { $0.contains("event=evicted ") }
        #expect(evictedLines.allSatisfy { $0.contains("info") && !$0.contains("notice") }, "\(evictedLines.first ?? "")")
        _ = await d.stop()
    }
}
