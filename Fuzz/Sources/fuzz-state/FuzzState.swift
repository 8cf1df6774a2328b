import Foundation
import FuzzDriver
import KVScrubDaemon

/// Arbitrary bytes as `state.json`: what the daemon reads at start-up.
let path = NSTemporaryDirectory() + "kvscrubd-fuzz-state-\(getpid())"

/// libFuzzer's entry point (its own `main`, linked in but unused, refers to it by this name).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    _ = FileManager.default.createFile(atPath: path + "/state.json", contents: Data(bytes(data, size)))
    if let record = try? StateStore(directory: path).load() {
        // What loads must save again and load back the same.
        try? StateStore(directory: path).save(record)
        if let again = try? StateStore(directory: path).load(), again != record {
            fatalError("state.json did not round-trip")
        }
    }
    return 0
}

/// Runs before fuzzing: one warm-up input, so lazily built globals and Foundation's own
/// caches are made here and not counted as a leak of the first input.
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> CInt {
    let warm: [UInt8] = Array("{\"version\":1}".utf8)
    _ = warm.withUnsafeBufferPointer { fuzzOne($0.baseAddress, $0.count) }
    return 0
}

@_cdecl("fuzz_state_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzOne)
}
