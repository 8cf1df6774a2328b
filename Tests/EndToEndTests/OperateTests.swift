import Foundation
import Testing
import KVCFormat
import KVCSimulation
@testable import KVScrubDaemon
#if canImport(Glibc)
import Glibc
#endif

/// Day-two operation against a real daemon process over its real socket:
/// scrub control, `scrub now`, metrics (parsed by Prometheus' own Python
/// parser), explain, regret advice, access control by SO_PEERCRED with a
/// real second user, and many concurrent clients.
@Suite(.serialized) struct OperateTests {
    static func fill(_ dir: String, count: Int, payload: UInt64, seedBase: UInt64 = 0) throws -> [String] {
        try (0..<count).map { i in
            let p = try Damage.store(dir, version: 2, seed: seedBase + UInt64(i), payload: payload)
            return String(p.split(separator: "/").last!)
        }
    }

    /// A temporary tree whose cache directory holds `count` v2 checkpoints.
    static func cacheWith(_ count: Int, payload: UInt64) throws -> (TempDir, String, [String]) {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        return (root, cache, try fill(cache, count: count, payload: payload))
    }

    static func json(_ r: Tool.Result) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]) ?? [:]
    }

    @Test func scrubControl_pauseResumeCancelStart_andStateSurvivesARestart() async throws {
        let (root, _, _) = try Self.cacheWith(6, payload: 1 << 20)
        // 1 MB/s over ~6.3 MB: a pass takes about 6 s, long enough to steer.
        var d = try await DaemonProcess(root: root, extra: ["--scrub-rate-mbps", "1"])
        let sock = ["--socket", d.socket]
        // The test runner may not look in time (its pool busy with other tests): a pass that ended
        // unseen is followed by one started by hand, and the count of passes below allows for it.
        var unseenPasses = 0
        try await waitUntil("a pass that has read something", timeout: 60) {
            let s = try d.status().scrub
            if !s.active && s.lastPass != nil && s.lastCancelledAt == nil {
                unseenPasses += 1
                _ = try d.request("scrub-start")
                return false
            }
            return s.active && s.bytesDone > 0
        }

        // Pause: no progress while paused; the ETA does not grow with the pause.
        let pause = try await Tool.run("kvscrubd", ["scrub", "pause"] + sock)
        #expect(pause.status == 0 && pause.stdout.contains("scrubbing paused"), "\(pause.stderr)")
        try await Task.sleep(for: .milliseconds(300))
        let p1 = try d.status().scrub
        try await Task.sleep(for: .seconds(1))
        let p2 = try d.status().scrub
        #expect(p1.paused && p2.paused)
        #expect(p2.bytesDone == p1.bytesDone, "a paused scrub went on reading")
        #expect(p2.pausedSeconds >= p1.pausedSeconds + 0.9)
        if let e1 = p1.etaSeconds, let e2 = p2.etaSeconds { #expect(e2 <= e1 + 0.5, "ETA grew while paused: \(e1) -> \(e2)") }
        let human = try await Tool.run("kvscrubd", ["scrub", "status"] + sock)
        #expect(human.stdout.contains("PAUSED") && human.stdout.contains("of scrubbing to go once resumed") && human.stdout.contains("limit 976.6 KiB/s = scrub_rate_mb_per_s 1"), "\(human.stdout)")
        // status says a person is needed, and what to do.
        let full = try await Tool.run("kvscrubd", ["status"] + sock)
        #expect(full.stdout.contains("action:    scrubbing is paused: nothing is verified until 'kvscrubd scrub resume'"), "\(full.stdout)")
        let js = Self.json(try await Tool.run("kvscrubd", ["scrub", "status", "--json"] + sock))
        #expect(js["paused"] as? Bool == true && js["active"] as? Bool == true && (js["files_total"] as? Int) == 6)

        // A restart keeps the pause and the pass position.
        #expect(await d.stop().status == 0)
        d = try await DaemonProcess(root: root, extra: ["--scrub-rate-mbps", "1"])
        let r1 = try d.status().scrub
        #expect(r1.paused && r1.active && r1.filesDone == p2.filesDone, "after restart: \(r1)")
        try await Task.sleep(for: .seconds(1))
        #expect(try d.status().scrub.bytesDone == r1.bytesDone)

        // Resume: progress again, to the end of the pass; the last pass is recorded.
        #expect(try await Tool.run("kvscrubd", ["scrub", "resume"] + sock).stdout.contains("resumed"))
        try await waitUntil("the pass to finish", timeout: 20, daemon: d) { let s = try d.status().scrub; return !s.active && s.lastPass != nil }
        let last = try #require(try d.status().scrub.lastPass)
        #expect(last.files == 6 && last.corruptFound == 0)

        // Start a pass by hand, refuse a second one, cancel it.
        let start = try await Tool.run("kvscrubd", ["scrub", "start"] + sock)
        #expect(start.status == 0 && start.stdout.contains("started over 6 files"), "\(start.stderr)")
        let again = try await Tool.run("kvscrubd", ["scrub", "start"] + sock)
        #expect(again.status == 1 && again.stderr.contains("already running"))
        let cancel = try await Tool.run("kvscrubd", ["scrub", "cancel", "--json"] + sock)
        #expect(cancel.status == 0 && (Self.json(cancel)["message"] as? String)?.contains("cancelled") == true, "\(cancel.stdout)")
        let after = try d.status().scrub
        #expect(!after.active && after.lastCancelledAt != nil)
        #expect((after.nextPassAt ?? 0) > Date().timeIntervalSince1970 + 3600, "a cancelled pass must not restart at once")
        #expect(try await Tool.run("kvscrubd", ["scrub", "cancel"] + sock).stderr.contains("no scrub pass is running"))

        // ...and the completed pass and counters survive a restart.
        #expect(await d.stop().status == 0)
        d = try await DaemonProcess(root: root, extra: ["--scrub-rate-mbps", "1"])
        #expect(try d.status().scrub.lastPass == last)
        #expect(try d.status().counters.passesCompleted == 1 + unseenPasses)
        let text = try await Tool.run("kvscrubd", ["status"] + sock).stdout
        #expect(text.contains("last pass: finished") && text.contains("6 files"), "\(text)")
        await d.stop()
    }

    @Test func scrubNow_reportsVerdicts_andRemovesOnlyTheCorrupt() async throws {
        let (root, cache, names) = try Self.cacheWith(2, payload: 256 << 10)
        // No pass for a day, no new-file checks for a while: only `scrub now` looks.
        let d = try await DaemonProcess(root: root, extra: ["--scrub-interval-hours", "24", "--scrub-new-file-delay", "3600"])
        _ = try d.request("scrub-cancel")
        let sock = ["--socket", d.socket]
        let good = try await Tool.run("kvscrubd", ["scrub", "now"] + sock + [names[0]])
        #expect(good.status == 0 && good.stdout.contains("ok") && good.stdout.contains("kept"), "\(good.stdout)\(good.stderr)")
        // Damage the second file's payload in place, then ask by path.
        Damage.edit(cache + "/" + names[1]) { $0[$0.count / 2] ^= 1 }
        let bad = try await Tool.run("kvscrubd", ["scrub", "now", "--json"] + sock + [cache + "/" + names[1]])
        #expect(bad.status == 1)
        let v = try #require((Self.json(bad)["files"] as? [[String: Any]])?.first)
        #expect(v["verdict"] as? String == "corrupt" && v["action"] as? String == "removed" && v["disposition"] as? String == "removed", "\(v)")
        #expect(!FileManager.default.fileExists(atPath: cache + "/" + names[1]))
        #expect(FileManager.default.fileExists(atPath: cache + "/" + names[0]))
        // Missing, and a path outside the cache directory: reported, nothing touched.
        let outside = root.file("elsewhere.kv")
        _ = FileManager.default.createFile(atPath: outside, contents: Data([1, 2, 3]))
        let odd = try await Tool.run("kvscrubd", ["scrub", "now", "--json"] + sock + [String(repeating: "ab", count: 20), outside])
        #expect(odd.status == 2)
        let verdicts = (Self.json(odd)["files"] as? [[String: Any]] ?? []).compactMap { $0["verdict"] as? String }
        #expect(verdicts == ["missing", "ignored"])
        #expect((Self.json(odd)["files"] as? [[String: Any]] ?? []).compactMap { $0["disposition"] as? String } == ["none", "none"])
        #expect(FileManager.default.fileExists(atPath: outside))
        #expect(try d.status().counters.corruptRemoved == 1)
        await d.stop()
    }

    @Test func metrics_parseWithPrometheusOwnParser_overTheSocketAndHTTP_andCountersPersist() async throws {
        let (root, cache, names) = try Self.cacheWith(4, payload: 256 << 10)
        Damage.edit(cache + "/" + names[3]) { $0[$0.count / 2] ^= 1 }
        let port = 20000 + Int(getpid() % 20000)
        var d = try await DaemonProcess(root: root, extra: ["--metrics-listen", "127.0.0.1:\(port)", "--scrub-rate-mbps", "0"])
        try await waitUntil("the corrupt file removed", timeout: 15, daemon: d) { try d.status().counters.corruptRemoved == 1 }
        try await waitUntil("the pass over", timeout: 15, daemon: d) { try d.status().scrub.lastPass != nil }
        // Evict one by budget: 3 files of ~258 KiB into a 0 MiB... use a budget below the total.
        let socketText = try await Tool.run("kvscrubd", ["metrics", "--socket", d.socket])
        #expect(socketText.status == 0)
        let parsed = try Self.promParse(socketText.stdout)
        #expect(parsed["kvscrubd_files|verdict=ok,version=2"] == 3, "\(parsed.filter { $0.key.hasPrefix("kvscrubd_files") })")
        #expect(parsed["kvscrubd_corrupt_removed_total|region=payload"] == 1)
        #expect(parsed["kvscrubd_corrupt_found_total|region=payload"] == 1)
        #expect(parsed["kvscrubd_scrub_passes_total"] == 1)
        #expect((parsed["kvscrubd_scrub_bytes_total"] ?? 0) > 0)
        #expect(parsed["kvscrubd_budget_bytes"] == Double(4096 << 20))
        #expect(parsed["kvscrubd_scrub_last_pass_end_time_seconds"].map { abs($0 - Date().timeIntervalSince1970) < 60 } == true)
        #expect(parsed["kvscrubd_evictions_total|cause=budget"] == 0)
        // The same over HTTP, with the content type a scraper expects; other paths are 404.
        let http = try Self.httpGet(port: port, path: "/metrics")
        #expect(http.status == 200 && http.contentType.hasPrefix("text/plain; version=0.0.4"), "\(http)")
        #expect(try Self.promParse(http.body)["kvscrubd_corrupt_removed_total|region=payload"] == 1)
        #expect(try Self.httpGet(port: port, path: "/").status == 404)
        // Restart with a budget that forces evictions: removal and pass counters go on from where they were.
        #expect(await d.stop().status == 0)
        d = try await DaemonProcess(root: root, extra: ["--metrics-listen", "127.0.0.1:\(port)", "--budget-mb", "0", "--scrub-interval-hours", "24"])
        let restarted = try Self.promParse(try Self.httpGet(port: port, path: "/metrics").body)
        #expect(restarted["kvscrubd_corrupt_removed_total|region=payload"] == 1)
        #expect(restarted["kvscrubd_scrub_passes_total"] == 1)
        await d.stop()
    }

    @Test func metrics_underDryRun_showTheCorruptFileStillThere() async throws {
        let (root, cache, names) = try Self.cacheWith(2, payload: 256 << 10)
        Damage.edit(cache + "/" + names[1]) { $0[$0.count / 2] ^= 1 }
        let d = try await DaemonProcess(root: root, extra: ["--dry-run", "--scrub-rate-mbps", "0"])
        try await waitUntil("the pass over", timeout: 15, daemon: d) { try d.status().scrub.lastPass != nil }
        let m = try Self.promParse(try await Tool.run("kvscrubd", ["metrics", "--socket", d.socket]).stdout)
        #expect(m["kvscrubd_files|verdict=corrupt,version=2"] == 1, "\(m.filter { $0.key.hasPrefix("kvscrubd_files") })")
        #expect(m["kvscrubd_files|verdict=ok,version=2"] == 1)
        #expect(m["kvscrubd_corrupt_found_total|region=payload"] == 1)
        #expect(m["kvscrubd_corrupt_removed_total|region=payload"] == 0)
        #expect(FileManager.default.fileExists(atPath: cache + "/" + names[1]))
        await d.stop()
    }

    /// Runs Debian's python3-prometheus-client parser over the text; returns "name|labels" -> value.
    static func promParse(_ text: String) throws -> [String: Double] {
        let script = """
        import sys, json
        from prometheus_client.parser import text_string_to_metric_families
        out = {}
        for fam in text_string_to_metric_families(sys.stdin.read()):
            for s in fam.samples:
                key = s.name + ("|" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) if s.labels else "")
                out[key] = s.value
        print(json.dumps(out))
        """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = ["-c", script]
        let input = Pipe(), output = Pipe(), err = Pipe()
        p.standardInput = input
        p.standardOutput = output
        p.standardError = err
        try p.run()
        input.fileHandleForWriting.write(Data(text.utf8))
        try input.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let d = try JSONSerialization.jsonObject(with: data) as? [String: Double] else {
            throw HarnessCommandFailed(command: "prometheus_client parser", stderr: String(decoding: e, as: UTF8.self))
        }
        return d
    }

    /// A plain HTTP/1.1 GET over a TCP socket.
    static func httpGet(port: Int, path: String) throws -> (status: Int, contentType: String, body: String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw HarnessCommandFailed(command: "connect 127.0.0.1:\(port)", stderr: String(cString: strerror(errno))) }
        let req = "GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        _ = req.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
        var all: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            all += buf[0..<n]
        }
        let text = String(decoding: all, as: UTF8.self)
        let parts = text.components(separatedBy: "\r\n\r\n")
        let head = parts.first ?? ""
        let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
        let type = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-type:") }.map { String($0.dropFirst(13)).trimmingCharacters(in: .whitespaces) } ?? ""
        return (status, type, parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    /// KVSCRUBD_SOCKET stands in for --socket; --socket still wins.
    @Test func kvscrubdSocketVariable_isTheDefaultSocket() async throws {
        let root = TempDir()
        let d = try await DaemonProcess(root: root)
        let viaEnv = try await Tool.runCapturing("/usr/bin/env", ["KVSCRUBD_SOCKET=\(d.socket)", Tool.binDir + "/kvscrubd", "status", "--json"])
        #expect(viaEnv.status == 0, "\(viaEnv.stderr)")
        #expect((Self.json(viaEnv)["state"] as? String) == "running")
        let flagWins = try await Tool.runCapturing("/usr/bin/env", ["KVSCRUBD_SOCKET=/nonexistent/sock", Tool.binDir + "/kvscrubd", "status", "--socket", d.socket])
        #expect(flagWins.status == 0, "\(flagWins.stderr)")
        let wrong = try await Tool.runCapturing("/usr/bin/env", ["KVSCRUBD_SOCKET=/nonexistent/sock", Tool.binDir + "/kvscrubd", "status"])
        #expect(wrong.status == 2 && wrong.stderr.contains("/nonexistent/sock"), "\(wrong.stderr)")
        await d.stop()
    }

    @Test func explain_andEntries_giveTheScoreParts_andRegretsTurnIntoAdvice() async throws {
        let root = TempDir()
        let cache = root.file("cache")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        // A 1 MiB budget and 300 KiB checkpoints: three fit.
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "1", "--evict-interval", "3600"])
        let sock = ["--socket", d.socket]
        var stored: [String] = []
        for i in 0..<3 {
            stored += try Self.fill(cache, count: 1, payload: 300 << 10, seedBase: UInt64(i))
            try await waitUntil("indexed", timeout: 5, daemon: d) { try d.status().files == i + 1 }
        }
        let entries = Self.json(try await Tool.run("kvscrubd", ["entries", "--json"] + sock))["entries"] as? [[String: Any]] ?? []
        #expect(entries.count == 3)
        #expect(entries.allSatisfy { $0["anchor_factor"] as? Double == 2 && $0["superseded"] as? Bool == false && $0["rank"] != nil })
        let first = try #require(entries.first?["name"] as? String)
        let x = try await Tool.run("kvscrubd", ["explain", String(first.prefix(8))] + sock)
        #expect(x.status == 0 && x.stdout.contains("rank 1 of 3") && x.stdout.contains("anchor") && x.stdout.contains("under its budget"), "\(x.stdout)")
        let xj = Self.json(try await Tool.run("kvscrubd", ["explain", "--json", first] + sock))
        #expect(xj["would_be_evicted_now"] as? Bool == false && xj["bytes_before"] as? Int == 0)
        #expect(try await Tool.run("kvscrubd", ["explain", "ffffffffff"] + sock).status == 1)

        // The engine keeps writing back what the budget evicts: regrets, then advice.
        var seeds: [String: UInt64] = [:]
        for (i, n) in stored.enumerated() { seeds[n] = UInt64(i) }
        func evicted() throws -> UInt64 { try d.status().counters.evictedBudget }
        var count = try evicted()
        var before = Set(try FileManager.default.contentsOfDirectory(atPath: cache))
        let newcomer = try Self.fill(cache, count: 1, payload: 300 << 10, seedBase: 100)[0]
        seeds[newcomer] = 100
        var regrets = 0
        for _ in 0..<4 {
            try await waitUntil("an eviction", timeout: 10) { try evicted() > count }
            let gone = before.subtracting(try FileManager.default.contentsOfDirectory(atPath: cache))
            let victim = try #require(gone.first)
            count = try evicted()
            before = Set(try FileManager.default.contentsOfDirectory(atPath: cache))
            // The engine stores the same prefix again: same text, same name.
            #expect(try Self.fill(cache, count: 1, payload: 300 << 10, seedBase: try #require(seeds[victim]))[0] == victim)
            regrets += 1
            try await waitUntil("the regret counted", timeout: 10, daemon: d) { try d.status().regret?.lastDay == regrets }
        }
        let s = try d.status()
        #expect(s.regret?.total == UInt64(regrets))
        let advice = try #require(s.regret?.advice)
        #expect(advice.contains("budget is too small") && advice.contains("\(regrets) regrets"), "\(advice)")
        #expect(try await Tool.run("kvscrubd", ["status"] + sock).stdout.contains("advice:"))
        #expect(d.events("regret").count == regrets)
        await d.stop()
    }

    @Test func accessControl_aSecondUserReads_butCannotChange_unlessInTheAdminGroup() async throws {
        let user = "kvs-e2e-reader", group = "kvs-e2e-admins"
        _ = try await Tool.runCapturing("/usr/sbin/useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user])
        defer {
            _ = Tool.runBlocking("/usr/sbin/userdel", [user])
            _ = Tool.runBlocking("/usr/sbin/groupdel", [group])
        }
        let root = TempDir()
        chmod(root.path, 0o755)
        let d = try await DaemonProcess(root: root, extra: ["--socket-mode", "0666", "--admin-group", group])
        func asUser(_ args: [String]) async throws -> Tool.Result {
            try await Tool.runCapturing("/usr/bin/setpriv", ["--reuid", user, "--regid", user, "--init-groups", Tool.binDir + "/kvscrubd"] + args + ["--socket", d.socket])
        }
        for read in [["status"], ["entries"], ["metrics"], ["scrub", "status"]] {
            let r = try await asUser(read)
            #expect(r.status == 0, "\(read) refused to a reader: \(r.stderr)")
        }
        for change in [["scrub", "pause"], ["scrub", "start"], ["scrub", "now", String(repeating: "ab", count: 20)], ["reload"], ["evict-now"]] {
            let r = try await asUser(change)
            #expect(r.status == 1 && r.stderr.contains("permission denied") && r.stderr.contains(group) && r.stderr.contains(user),
                    "\(change): \(r.status) \(r.stderr)")
        }
        #expect(try d.status().scrub.paused == false)
        // Root is allowed; so is the user once in the admin group.
        #expect(try await Tool.run("kvscrubd", ["scrub", "pause", "--socket", d.socket]).status == 0)
        #expect(try await Tool.runCapturing("/usr/sbin/groupadd", ["--system", group]).status == 0)
        #expect(try await Tool.runCapturing("/usr/sbin/usermod", ["-aG", group, user]).status == 0)
        // Read just before, so a status reply from before the resume is at hand: the resume, decided
        // off the event loop (the group database), must still make the next status fresh.
        #expect(try d.status().scrub.paused == true)
        let r = try await asUser(["scrub", "resume"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try d.status().scrub.paused == false)
        #expect(d.events("refused").count == 5)
        await d.stop()
    }

    @Test func reload_andEvictNow_reportWhatTheyDid_inTextAndJSON() async throws {
        let (root, _, _) = try Self.cacheWith(4, payload: 300 << 10)
        let conf = root.file("kvscrubd.conf")
        try "budget_mb: 4096\n".write(toFile: conf, atomically: true, encoding: .utf8)
        let d = try await DaemonProcess(root: root, extra: ["--config", conf, "--evict-interval", "3600"])
        let sock = ["--socket", d.socket]
        let noop = try await Tool.run("kvscrubd", ["evict-now"] + sock)
        #expect(noop.status == 0 && noop.stdout.contains("evaluated: 0 files evicted"), "\(noop.stdout)\(noop.stderr)")
        // Shrink the budget in the file; reload takes it; evict-now applies it at once (the timer is an hour away).
        try "budget_mb: 1\n".write(toFile: conf, atomically: true, encoding: .utf8)
        let reload = try await Tool.run("kvscrubd", ["reload"] + sock)
        #expect(reload.status == 0 && reload.stdout.contains("configuration reloaded"))
        #expect(try d.status().budgetBytes == 1 << 20)
        let evict = Self.json(try await Tool.run("kvscrubd", ["evict-now", "--json"] + sock))
        #expect((evict["message"] as? String)?.contains("evaluated: 1 files evicted") == true, "\(evict) \(d.log.suffix(1500))")
        #expect(try d.status().bytes <= 1 << 20)
        // A bad file: reload says so, exit 1, the running settings stay.
        try "budget_mb: lots\n".write(toFile: conf, atomically: true, encoding: .utf8)
        let bad = try await Tool.run("kvscrubd", ["reload"] + sock)
        #expect(bad.status == 1 && bad.stderr.contains("budget_mb") && bad.stderr.contains("previous settings stay"), "\(bad.stderr)")
        #expect(try d.status().budgetBytes == 1 << 20)
        let metricsJSON = Self.json(try await Tool.run("kvscrubd", ["metrics", "--json"] + sock))
        #expect((metricsJSON["metrics"] as? String)?.contains("kvscrubd_evictions_total{cause=\"budget\"} 1") == true)
        await d.stop()
    }

    @Test func connectionCap_turnsAwayTheSurplus_andTheDaemonGoesOn() async throws {
        let root = TempDir()
        let d = try await DaemonProcess(root: root)
        // Hold the cap's worth of idle connections open, then one more.
        var held: [RawClient] = []
        for _ in 0..<ConnectionLimits().total { held.append(try RawClient(path: d.socket)) }
        held[0].send("{\"cmd\":\"ping\"}\n")
        #expect(held[0].readLine() == "{\"ok\":true}")
        let surplus = try RawClient(path: d.socket)
        #expect(surplus.readLine().contains("too many connections"))
        held.removeAll()
        try await waitUntil("room again", timeout: 5, daemon: d) { (try? d.request("ping"))?.ok == true }
        #expect(try d.status().state == "running")
        await d.stop()
    }

    @Test func hundredClients_hundredRequestsEach_whileAScrubRuns() async throws {
        let (root, _, _) = try Self.cacheWith(20, payload: 1 << 20)
        let d = try await DaemonProcess(root: root, extra: ["--scrub-rate-mbps", "5"])
        try await waitUntil("a scrub running", timeout: 10, daemon: d) { try d.status().scrub.active }
        let latencies = Mutexed([Double]())
        let failures = Mutexed([String]())
        let path = d.socket
        // 100 real threads, all connected before any sends (concurrentPerform would run only as many as there are cores).
        let connected = DispatchGroup(), go = DispatchSemaphore(value: 0), finished = DispatchGroup()
        for client in 0..<100 {
            connected.enter()
            finished.enter()
            Thread {
            defer { finished.leave() }
            let c = try? RawClient(path: path)
            connected.leave()
            go.wait()
            guard let c else { failures.withLock { $0.append("connect \(client)") }; return }
            var mine: [Double] = []
            var bad: [String] = []
            for i in 0..<100 {
                let cmd = ["status", "entries", "ping", "scrub-status"][i % 4]
                let t0 = ContinuousClock.now
                c.send("{\"cmd\":\"\(cmd)\"}\n")
                let line = c.readLine()
                let dt = ContinuousClock.now - t0
                mine.append(Double(dt.components.attoseconds) / 1e15 + Double(dt.components.seconds) * 1000)
                let ok: Bool
                switch cmd {
                case "status": ok = line.contains("\"ok\":true") && line.contains("\"files\":20")
                case "entries": ok = line.contains("\"ok\":true") && line.components(separatedBy: "\"rank\":").count == 21
                case "scrub-status": ok = line.contains("\"ok\":true") && line.contains("\"files_total\":20")
                default: ok = line == "{\"ok\":true}"
                }
                if !ok { bad.append("client \(client) request \(i) \(cmd): \(line.prefix(200))") }
            }
            latencies.withLock { $0 += mine }
            if !bad.isEmpty { failures.withLock { $0 += bad } }
            }.start()
        }
        // Waited for on a Dispatch thread, not one of the test runner's pool.
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in connected.notify(queue: .global()) { c.resume() } }
        for _ in 0..<100 { go.signal() }
        let ended = await withCheckedContinuation { (c: CheckedContinuation<DispatchTimeoutResult, Never>) in
            DispatchQueue.global().async { c.resume(returning: finished.wait(timeout: .now() + 120)) }
        }
        #expect(ended == .success)
        let all = latencies.get().sorted()
        #expect(failures.get().isEmpty, "\(failures.get().prefix(5))")
        #expect(all.count == 10_000)
        let p50 = all[all.count / 2], p99 = all[all.count * 99 / 100]
        print("control socket, 100 clients x 100 requests during a scrub: p50 \(String(format: "%.2f", p50)) ms, p99 \(String(format: "%.2f", p99)) ms, max \(String(format: "%.2f", all.last!)) ms")
        #expect(p99 < 1000, "p99 \(p99) ms")
        #expect(try d.status().scrub.active || d.status().scrub.lastPass != nil)
        await d.stop()
    }
}
