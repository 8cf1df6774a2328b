import Foundation
import Testing

/// ds4's own disk-cache code as a program the tests run: ds4_kvstore.c from
/// ds4's source (../shared/reference/ds4-e8e8779 beside the repository, or
/// $KVSCRUBD_DS4_SOURCE), compiled unmodified with cc together with the
/// stand-in model and driver in Tests/DS4Harness. Twice a description of the
/// engine was wrong while our own simulator agreed with it; this is the
/// engine's code, so its verdicts are the ones that count.
enum DS4Engine {
    /// Where ds4's source is looked for, in order.
    static var candidates: [String] {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        var c: [String] = []
        if let env = ProcessInfo.processInfo.environment["KVSCRUBD_DS4_SOURCE"], !env.isEmpty { c.append(env) }
        c.append(repo.deletingLastPathComponent().appendingPathComponent("shared/reference/ds4-e8e8779").path)
        return c
    }

    static var harnessSource: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("DS4Harness").path
    }

    enum Build {
        case built(String)
        case noSource(String)
        case failed(String)
    }

    /// Compiled once per test run, by the first test that asks (the others await the same task).
    static let build = Task<Build, Never> {
        guard let src = candidates.first(where: { FileManager.default.fileExists(atPath: $0 + "/ds4_kvstore.c") }) else {
            return .noSource("ds4's source was not found at \(candidates.joined(separator: " or ")) (set KVSCRUBD_DS4_SOURCE)")
        }
        let out = NSTemporaryDirectory() + "ds4-harness-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let exe = out + "/ds4-harness"
        let args = ["-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    "-I", src, "-I", harnessSource, "-o", exe,
                    src + "/ds4_kvstore.c", harnessSource + "/standin_model.c", harnessSource + "/ds4_harness.c", "-lm"]
        guard let r = try? await Tool.runCapturing("/usr/bin/cc", args) else { return .failed("cannot run cc") }
        guard r.status == 0 else { return .failed("cc failed:\n\(r.stderr)") }
        return .built(exe)
    }

    /// The harness, or nil after saying loudly why the test did not run (a failure under CI, which
    /// always has the source beside the clone).
    static func harness() async -> String? {
        switch await build.value {
        case .built(let exe): return exe
        case .failed(let why):
            Issue.record("the ds4 harness did not build: \(why)")
            return nil
        case .noSource(let why):
            let loud = "*** REAL-ENGINE TEST DID NOT RUN: \(why) ***"
            FileHandle.standardError.write(Data((loud + "\n").utf8))
            print(loud)
            if ProcessInfo.processInfo.environment["CI"] != nil { Issue.record(Comment(rawValue: loud)) }
            return nil
        }
    }

    /// Runs a harness command; returns its output lines and the JSON object on its last line.
    @discardableResult
    static func run(_ exe: String, _ args: [String]) async throws -> (lines: [String], summary: [String: Int]) {
        let r = try await Tool.runCapturing("/usr/bin/env", ["ASAN_OPTIONS=detect_leaks=0", exe] + args)
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(r.status == 0, "ds4-harness \(args.joined(separator: " ")) exited \(r.status): \(r.stderr)")
        return (lines, integers(lines.last ?? ""))
    }

    /// Starts a harness command in the background (the churn), its output into `log`.
    static func start(_ exe: String, _ args: [String], log: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["ASAN_OPTIONS"] = "detect_leaks=0"
        p.environment = env
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        p.standardOutput = FileHandle(forWritingAtPath: log)
        p.standardError = FileHandle.standardError
        try p.run()
        return p
    }

    static func summary(ofLog log: String) -> [String: Int] {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return integers(text.split(separator: "\n").last.map(String.init) ?? "")
    }

    /// A JSON object's numbers, as integers (the harness prints counts, and seconds as a fraction).
    static func integers(_ line: String) -> [String: Int] {
        guard let o = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else { return [:] }
        return o.compactMapValues { ($0 as? NSNumber)?.intValue }
    }
}
