// swift-tools-version:6.0
// libFuzzer targets for every parser of untrusted bytes. Built and run by
// scripts/fuzz, with -sanitize=fuzzer,address over every Swift module (so the
// format module and the daemon's parsers are instrumented for coverage).
// A package of its own, as Benchmarks/ is: the main build never sees the
// fuzzer flags.
import Foundation
import PackageDescription

// A path dependency's identity is its folder's name, which is whatever the clone was called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()

// The fuzz entry points are not `main` programs: libFuzzer's driver is.
let library: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "kvscrubd-fuzz",
    dependencies: [.package(path: "../")],
    targets: [
        .target(name: "FuzzDriver"),
        .executableTarget(name: "fuzz-verifier", dependencies: ["FuzzDriver", .product(name: "KVCFormat", package: root)],
                          swiftSettings: library),
        .executableTarget(name: "fuzz-config", dependencies: ["FuzzDriver", .product(name: "KVScrubDaemon", package: root)],
                          swiftSettings: library),
        .executableTarget(name: "fuzz-control", dependencies: ["FuzzDriver", .product(name: "KVScrubDaemon", package: root), .product(name: "KVScrubControl", package: root)],
                          swiftSettings: library),
        .executableTarget(name: "fuzz-state", dependencies: ["FuzzDriver", .product(name: "KVScrubDaemon", package: root)],
                          swiftSettings: library),
    ]
)
