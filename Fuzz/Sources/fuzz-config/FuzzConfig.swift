import FuzzDriver
import KVScrubDaemon

/// Arbitrary text as the config file: YAML parsing, every setting's parser,
/// and validation. An error is fine; a crash is not.
/// libFuzzer's entry point (its own `main`, linked in but unused, refers to it by this name).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let text = String(decoding: bytes(data, size), as: UTF8.self)
    guard let pairs = try? DaemonConfig.pairs(fromYAML: text, source: "fuzz") else { return 0 }
    var c = DaemonConfig()
    _ = try? c.apply(pairs, source: "fuzz")
    return 0
}

/// Runs before fuzzing: one warm-up input, so lazily built globals and Foundation's own
/// caches are made here and not counted as a leak of the first input.
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> CInt {
    let warm: [UInt8] = Array("budget_mb: 10\nremoval_brake: 5,5%\n".utf8)
    _ = warm.withUnsafeBufferPointer { fuzzOne($0.baseAddress, $0.count) }
    return 0
}

@_cdecl("fuzz_config_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runFuzzer(argc, argv, fuzzOne)
}
