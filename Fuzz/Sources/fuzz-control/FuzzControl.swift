import Foundation
import FuzzDriver
import KVScrubControl
@_spi(Fuzzing) import KVScrubDaemon
import Logging

/// Arbitrary bytes as one control-socket request line: decoded as the server
/// decodes it, then answered by the daemon's own request handling (status,
/// entries, explain, metrics, scrub control, brake release, reload...) for a
/// reader and for root. Requests that run later (scrub now, evict now) are
/// only routed. The daemon is real but never started: no socket, no threads.
let daemon: Daemon = {
    var c = DaemonConfig()
    c.stateDir = NSTemporaryDirectory() + "kvscrubd-fuzz-control-\(getpid())"
    c.cacheDir = c.stateDir + "/cache"
    var logger = Logger(label: "fuzz")
    logger.logLevel = .critical
    return try! Daemon(config: c, configFile: nil, flags: [], logger: logger)
}()

let peers = [AccessPolicy.Peer(pid: 1, uid: 0, gid: 0), AccessPolicy.Peer(pid: 2, uid: 54321, gid: 54321)]

/// libFuzzer's entry point (its own `main`, linked in but unused, refers to it by this name).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let request = try? JSONDecoder().decode(ControlRequest.self, from: Data(bytes(data, size))) else { return 0 }
    for peer in peers {
        if case .now(let response) = daemon.handle(request, peer: peer) {
            _ = try? JSONEncoder().encode(response)
        }
    }
    return 0
}

/// Runs before fuzzing: one warm-up input, so lazily built globals and Foundation's own
/// caches are made here and not counted as a leak of the first input.
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> CInt {
    let warm: [UInt8] = Array("{\"cmd\":\"status\"}".utf8)
    _ = warm.withUnsafeBufferPointer { fuzzOne($0.baseAddress, $0.count) }
    return 0
}

@_cdecl("fuzz_control_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzOne)
}
