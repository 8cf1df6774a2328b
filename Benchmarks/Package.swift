// swift-tools-version:6.0
// Benchmarks live in their own package (as swift-nio's do) so the main build stays lean.
// Run: Benchmarks/run   (builds kvscrubd in release, then this package, then runs kvc-bench)
import Foundation
import PackageDescription

// A path dependency's identity is its folder's name, which is whatever the clone was called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()

let package = Package(
    name: "kvscrubd-benchmarks",
    dependencies: [
        .package(path: "../"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // The reference the ratios are measured against: ISA-L called from plain C.
        .target(name: "CRefISAL", linkerSettings: [.linkedLibrary("isal")]),
        .executableTarget(name: "cref-verify", dependencies: ["CRefISAL"]),
        .executableTarget(name: "cref-maxrss"),
        // The control-socket benchmark's floor: canned replies from a plain C epoll server.
        .executableTarget(name: "cref-echo"),
        .executableTarget(
            name: "kvc-bench",
            dependencies: [
                "CRefISAL",
                .product(name: "KVCFormat", package: root),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
    ]
)
