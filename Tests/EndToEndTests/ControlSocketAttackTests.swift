import Foundation
import Testing
@testable import KVScrubDaemon
#if canImport(Glibc)
import Glibc
#endif

/// The control socket under the attacks that used to work (issue 13): one
/// user holding every connection, and a client that pipelines requests and
/// never reads its replies. Real processes, a real second and third user.
@Suite(.serialized) struct ControlSocketAttackTests {
    /// A system user for the test, removed afterwards.
    final class TestUser {
        let name: String
        init(_ name: String) throws {
            self.name = name
            _ = Tool.runBlocking("/usr/sbin/useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
        }
        deinit { _ = Tool.runBlocking("/usr/sbin/userdel", [name]) }
    }

    static func rssKiB(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    /// A daemon over 400 checkpoints, every one indexed: each `entries` reply is about 200 KB.
    static func daemonWith400Files() async throws -> DaemonProcess {
        let (root, _, _) = try OperateTests.cacheWith(400, payload: 64 << 10)
        let d = try await DaemonProcess(root: root, extra: ["--budget-mb", "0", "--scrub-rate-mbps", "0"])
        try await waitUntil("the files indexed", timeout: 30, daemon: d) { try d.status().files == 400 }
        return d
    }

    /// A process (as `asUser`, or root) that opens 256 connections, pings on each and holds them
    /// until released; `report` is "admitted=N refused=M", counting refusals whose reply contains `refusal`.
    struct Flood {
        let helper: Process
        let input: Pipe
        let report: String
        func release() { try? input.fileHandleForWriting.close(); helper.waitUntilExit() }
    }

    static func flood(_ socket: String, refusal: String, asUser user: String?) throws -> Flood {
        let script = """
            import socket, sys
            held, admitted, refused = [], 0, 0
            for i in range(256):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(sys.argv[1])
                try:
                    s.sendall(b'{"cmd":"ping"}\\n')
                except BrokenPipeError:
                    pass  # a refused connection gets its reply at once and is closed: the reply is still there to read
                reply = s.makefile().readline()
                if '"ok":true' in reply: admitted += 1
                elif sys.argv[2] in reply: refused += 1
                held.append(s)
            print(f"admitted={admitted} refused={refused}", flush=True)
            sys.stdin.read()
            """
        let helper = Process()
        let python = ["/usr/bin/python3", "-c", script, socket, refusal]
        if let user {
            helper.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            helper.arguments = ["--reuid", user, "--regid", user, "--init-groups"] + python
        } else {
            helper.executableURL = URL(fileURLWithPath: python[0])
            helper.arguments = Array(python.dropFirst())
        }
        let out = Pipe(), input = Pipe()
        helper.standardOutput = out
        helper.standardInput = input
        try helper.run()
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line += chunk
        }
        return Flood(helper: helper, input: input, report: String(decoding: line, as: UTF8.self))
    }

    @Test func oneUserHoldingConnections_cannotKeepOthersOut() async throws {
        let flood = try TestUser("kvs-e2e-flood"), other = try TestUser("kvs-e2e-other")
        let root = TempDir()
        chmod(root.path, 0o755)
        let d = try await DaemonProcess(root: root, extra: ["--socket-mode", "0666"])
        // As the flooding user: open 256 connections (the whole cap), ping on each, report, and hold them until stdin closes.
        let flooding = try Self.flood(d.socket, refusal: "too many connections from uid", asUser: flood.name)
        defer { flooding.release() }
        let report = flooding.report
        let limits = ConnectionLimits()
        #expect(report.hasPrefix("admitted=\(limits.perUID) refused=\(256 - limits.perUID)"), "\(report)")
        // While the flood holds its connections: another user, and root, get in at once.
        let asOther = try await Tool.runCapturing("/usr/bin/setpriv", ["--reuid", other.name, "--regid", other.name, "--init-groups",
                                                                 Tool.binDir + "/kvscrubd", "status", "--socket", d.socket])
        #expect(asOther.status == 0 && asOther.stdout.contains("state:"), "\(asOther.stderr)")
        #expect(try d.request("status").ok)
        await d.stop()
    }

    /// A runaway root script opening every connection it can holds at most half of them: root's
    /// other processes (an operator's `kvscrubd status`) still get in at once.
    @Test func oneRootProcessHoldingConnections_cannotKeepRootsOtherProcessesOut() async throws {
        let root = TempDir()
        let d = try await DaemonProcess(root: root)
        let flooding = try Self.flood(d.socket, refusal: "per process", asUser: nil)
        defer { flooding.release() }
        let report = flooding.report
        let limits = ConnectionLimits()
        #expect(report.hasPrefix("admitted=\(limits.perProcess) refused=\(256 - limits.perProcess)"), "\(report)")
        // While it holds them: 120 fresh requests from other root processes, every one answered.
        var answered = 0
        for _ in 0..<120 where (try? await Tool.run("kvscrubd", ["status", "--json", "--socket", d.socket]))?.status == 0 { answered += 1 }
        #expect(answered == 120)
        await d.stop()
    }

    @Test func aClientThatPipelinesAndNeverReads_costsTheDaemonAFewReplies() async throws {
        let d = try await Self.daemonWith400Files()
        let pid = d.process.processIdentifier
        _ = try d.request("entries")
        let before = Self.rssKiB(pid)
        // Pipelined requests, never a read: send until the socket will take no more.
        let c = try RawClient(path: d.socket)
        _ = fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK)
        let request = Array(String(repeating: "{\"cmd\":\"entries\"}\n", count: 64).utf8)
        var sent = 0
        var stuck = 0
        // A full socket for two seconds running: the daemon has stopped reading.
        while stuck < 200 {
            let n = request.withUnsafeBytes { write(c.fd, $0.baseAddress, $0.count) }
            if n > 0 { sent += n; stuck = 0 } else { stuck += 1; usleep(10_000) }
        }
        let requests = sent / 18
        // Meanwhile everyone else is answered.
        let start = ContinuousClock.now
        #expect(try d.request("status").ok)
        #expect(ContinuousClock.now - start < .seconds(1))
        let after = Self.rssKiB(pid)
        // Unbounded, this is every reply asked for: requests x ~200 KB (hundreds of MiB). Bounded, it is
        // the reply being written plus what NIO holds up to its high-water mark (64 KiB): well under 8 MiB.
        #expect(requests > 1000, "only \(requests) requests went out")
        #expect(after - before < 8 * 1024, "RSS grew \((after - before) / 1024) MiB for \(requests) unread requests")
        print("pipelined \(requests) entries requests never read: RSS \(before / 1024) -> \(after / 1024) MiB")
        await d.stop()
    }

    @Test func aBurstOfPipelinedRequests_isAnsweredInFull_oneAtATime() async throws {
        // 20,000 requests in one write, replies read as they come: every one answered, in order,
        // and answering them one after another (the channel writable all along) does not recurse.
        let d = try await DaemonProcess(root: TempDir())
        let c = try RawClient(path: d.socket)
        let n = 20_000
        let replies = Mutexed([String]())
        let done = DispatchSemaphore(value: 0)
        let fd = c.fd
        let reader = Thread {
            var got: [String] = []
            var pending: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while got.count < n {
                let r = read(fd, &chunk, chunk.count)
                if r <= 0 { break }
                pending += chunk[0..<r]
                while let nl = pending.firstIndex(of: 10) {
                    got.append(String(decoding: pending[..<nl], as: UTF8.self))
                    pending.removeSubrange(...nl)
                }
            }
            replies.set(got)
            done.signal()
        }
        reader.start()
        let burst = Array(String(repeating: "{\"cmd\":\"ping\"}\n", count: n).utf8)
        var sent = 0
        while sent < burst.count {
            let w = burst[sent...].withUnsafeBytes { write(c.fd, $0.baseAddress, $0.count) }
            guard w > 0 else { break }
            sent += w
        }
        #expect(sent == burst.count)
        #expect(done.wait(timeout: .now() + 120) == .success)
        let got = replies.get()
        #expect(got.count == n && got.allSatisfy { $0 == "{\"ok\":true}" }, "\(got.count) replies")
        #expect(try d.request("status").ok)
        await d.stop()
    }

    @Test func aSlowReader_getsEveryReply_inOrder() async throws {
        // Flow control must not cost a slow client anything: replies wait in the socket, in request order.
        let d = try await Self.daemonWith400Files()
        let c = try RawClient(path: d.socket)
        c.send("{\"cmd\":\"entries\"}\n{\"cmd\":\"entries\"}\n{\"cmd\":\"ping\"}\n")
        try await Task.sleep(for: .seconds(2)) // the client is slow on purpose; nothing here waits for the daemon
        let first = c.readLine(), second = c.readLine(), third = c.readLine()
        #expect(first.hasPrefix("{\"engine_abi\"") || first.contains("\"entries\""), "\(first.prefix(80))")
        #expect(second.contains("\"entries\"") && third == "{\"ok\":true}", "\(third)")
        await d.stop()
    }
}
