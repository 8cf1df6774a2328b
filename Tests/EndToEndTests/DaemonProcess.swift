import Foundation
import KVScrubControl
import KVScrubDaemon
#if canImport(Glibc)
import Glibc
#endif

/// A real `kvscrubd run` process on a private directory tree: cache, state,
/// socket and log all under one temporary directory.
final class DaemonProcess {
    let root: TempDir
    let cache: String
    let stateDir: String
    let socket: String
    let logPath: String
    let process = Process()
    /// When the process exited, as Foundation's own thread saw it: a test's
    /// await may resume later when the runner's pool is busy.
    let exitedAt = Mutexed<ContinuousClock.Instant?>(nil)

    /// `logLevel`: the --log-level flag (nil: none, so a config file's log_level applies).
    init(root: TempDir, extra: [String] = [], cacheDir: String? = nil, environment: [String: String] = [:],
         waitForSocket: Bool = true, logLevel: String? = "debug") async throws {
        self.root = root
        cache = cacheDir ?? root.file("cache")
        stateDir = root.file("state")
        socket = root.file("ctl.sock")
        logPath = root.file("daemon.log")
        try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: Tool.binDir + "/kvscrubd")
        process.arguments = ["run", "--cache-dir", cache, "--state-dir", stateDir, "--socket", socket]
            + (logLevel.map { ["--log-level", $0] } ?? []) + extra
        process.standardError = FileHandle(forWritingAtPath: logPath)
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let exitedAt = self.exitedAt
        process.terminationHandler = { _ in exitedAt.set(ContinuousClock.now) }
        try process.run()
        guard waitForSocket else { return }
        try await waitUntil("the daemon answers on its socket", timeout: 20) { (try? self.request("ping"))?.ok == true }
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }

    func request(_ cmd: String) throws -> ControlResponse {
        try ControlClient(path: socket).send(ControlRequest(cmd: cmd))
    }

    func status() throws -> StatusReport { try request("status").status! }

    /// `scrub-now` for these files: each verified at once, with what the daemon did.
    func scrubNow(_ files: [String]) throws -> [FileVerdict] {
        var c = ControlClient(path: socket)
        c.timeout = 120
        return try c.send(ControlRequest(cmd: "scrub-now", files: files)).verdicts ?? []
    }

    var metricsText: String? { try? request("metrics").metrics }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Log lines carrying `event=NAME`, as key=value dictionaries.
    func events(_ name: String) -> [[String: String]] {
        log.split(separator: "\n").filter { $0.contains("event=\(name) ") }.map { line in
            var d: [String: String] = [:]
            for part in line.split(separator: " ") {
                let kv = part.split(separator: "=", maxSplits: 1)
                if kv.count == 2 { d[String(kv[0])] = String(kv[1]) }
            }
            return d
        }
    }

    /// SIGTERM, and how long the daemon took to exit.
    @discardableResult
    func stop() async -> (status: Int32, seconds: Double) {
        let t0 = ContinuousClock.now
        kill(process.processIdentifier, SIGTERM)
        await process.exited()
        while exitedAt.get() == nil { try? await Task.sleep(for: .milliseconds(10)) } // the handler runs just after
        let d = exitedAt.get()! - t0
        return (process.terminationStatus, Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }
}

struct Timeout: Error, CustomStringConvertible {
    var what: String
    var log: String? = nil
    var description: String { "timed out waiting for \(what)" + (log.map { "; the daemon's log ends:\n\($0)" } ?? "") }
}

/// A helper program the harness needs (systemd, sysusers) failed.
struct HarnessCommandFailed: Error, CustomStringConvertible {
    var command: String
    var stderr: String
    var description: String { "\(command) failed: \(stderr)" }
}

/// Polls `condition` every 50 ms until it holds, or throws `Timeout`.
/// Async: a test waiting on a daemon gives its thread back to the test
/// runner's pool, which on 2 cores has 2 threads; a blocking wait held one
/// for the whole wait and kept every other test from running.
/// `daemon`: the daemon waited on, whose log's last lines the timeout then carries.
func waitUntil(_ what: String, timeout: Double, daemon: DaemonProcess? = nil, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .milliseconds(Int64(timeout * 1000))
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    if try await condition() { return }
    throw Timeout(what: what, log: daemon.map { String($0.log.suffix(6000)) })
}

extension Process {
    /// Waits for the process to exit without holding a thread (`waitUntilExit` blocks one).
    func exited() async {
        while isRunning { try? await Task.sleep(for: .milliseconds(10)) }
    }
}

func checkpoints(in dir: String) -> Set<String> {
    Set(((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".kv") && $0.count == 43 })
}
