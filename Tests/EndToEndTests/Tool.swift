import Foundation

/// Runs the built executables as real processes and captures what they print.
enum Tool {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
        var json: Any? { try? JSONSerialization.jsonObject(with: Data(stdout.utf8)) }
    }

    /// The build products sit next to the test bundle.
    static var binDir: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }

    /// Runs one of the built executables.
    static func run(_ name: String, _ args: [String]) async throws -> Result {
        try await runCapturing(binDir + "/" + name, args)
    }

    /// Runs any program by path, stdin from /dev/null. Waits without holding a
    /// thread of the test runner's pool (see `waitUntil`).
    static func runCapturing(_ path: String, _ args: [String]) async throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        // Drain both pipes while the process runs so a large output cannot block it.
        let o = Mutexed(Data()), e = Mutexed(Data())
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { o.set(out.fileHandleForReading.readDataToEndOfFile()); group.leave() }
        group.enter()
        DispatchQueue.global().async { e.set(err.fileHandleForReading.readDataToEndOfFile()); group.leave() }
        await p.exited()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in group.notify(queue: .global()) { c.resume() } }
        return Result(status: p.terminationStatus, stdout: String(decoding: o.get(), as: UTF8.self),
                      stderr: String(decoding: e.get(), as: UTF8.self))
    }
}

import NIOConcurrencyHelpers

final class Mutexed<T: Sendable>: Sendable {
    // A pthread mutex (NIO's), which ThreadSanitizer understands; Synchronization.Mutex it does not on Linux.
    private let m: NIOLockedValueBox<T>
    init(_ v: T) { m = NIOLockedValueBox(v) }
    func set(_ v: T) { m.withLockedValue { $0 = v } }
    func get() -> T { m.withLockedValue { $0 } }
    func withLock<R>(_ body: (inout T) -> R) -> R { m.withLockedValue { body(&$0) } }
}

final class TempDir {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "kvc-e2e-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
}

func flipByte(_ path: String, at offset: Int) {
    var b = Array(FileManager.default.contents(atPath: path)!)
    b[offset] ^= 0xFF
    try! Data(b).write(to: URL(fileURLWithPath: path))
}

extension Tool {
    /// `runCapturing` for where a test cannot wait asynchronously: an `init`, a `deinit`, a `defer`.
    /// Only for commands that end at once (useradd, userdel, umount -l): it holds a thread of the test
    /// runner's pool while it waits.
    static func runBlocking(_ path: String, _ args: [String]) -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return -1 }
        p.waitUntilExit()
        return p.terminationStatus
    }

    /// Runs a system command; returns its exit status.
    static func runSystem(_ path: String, _ args: [String]) async throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        try p.run()
        await p.exited()
        return p.terminationStatus
    }
}
