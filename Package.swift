// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "kvscrubd",
    products: [
        // The engine links this one: it must stay free of daemon, socket and systemd code.
        .library(name: "KVCFormat", targets: ["KVCFormat"]),
        // libkvcformat.so for C engines (kvc.h); scripts/build-libkvcformat adds the
        // SONAME, the version script and the static Swift runtime.
        .library(name: "kvcformat", type: .dynamic, targets: ["KVCFormatC"]),
        // For Fuzz/ (the fuzz targets of the daemon's parsers); not an API.
        .library(name: "KVScrubDaemon", targets: ["KVScrubDaemon"]),
        // The control socket's requests and replies, and its client.
        .library(name: "KVScrubControl", targets: ["KVScrubControl"]),
        .executable(name: "kvscrubd", targets: ["kvscrubd"]),
        .executable(name: "kvc-engine-sim", targets: ["kvc-engine-sim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CISAL",
            pkgConfig: "libisal",
            providers: [.apt(["libisal-dev"])]
        ),
        // renameat2(RENAME_NOREPLACE) for the format module's removal protocol.
        .target(name: "CKVCLinux"),
        .target(
            name: "KVCFormat",
            dependencies: [
                "CISAL",
                "CKVCLinux",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // kvc.h, the C API's one header, and the compile-time checks of its layout.
        .target(name: "CKVCAPI"),
        // The C API's export layer: @_cdecl functions over KVCFormat, so the format
        // module itself holds no C-export code.
        .target(name: "KVCFormatC", dependencies: ["KVCFormat", "CKVCAPI"]),
        // The config file's YAML parser: Debian's libyaml, not a copy bundled in the binary.
        .systemLibrary(
            name: "CYAML",
            pkgConfig: "yaml-0.1",
            providers: [.apt(["libyaml-dev"])]
        ),
        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),
        // systemd integration: readiness and watchdog (sd_notify), socket
        // activation (sd_listen_fds), native journal logging (sd_journal_sendv).
        .target(
            name: "KVScrubSystemd",
            dependencies: [
                "CSystemd",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Linux calls Swift cannot make directly: ioprio_set has no libc
        // wrapper and syscall(2) is variadic.
        .target(name: "CLinux"),
        // The control socket's protocol as its clients see it: the request and reply
        // types and the blocking client; what the CLI's commands import, apart from
        // `run` and `verify`, which are the daemon (or read its state).
        .target(name: "KVScrubControl", dependencies: ["KVCFormat"]),
        // The daemon's parts: watcher, index, evictor, scrubber, control server.
        .target(
            name: "KVScrubDaemon",
            dependencies: [
                "KVCFormat",
                "KVScrubControl",
                "CLinux",
                "KVScrubSystemd",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                "CYAML",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "HeapModule", package: "swift-collections"),
            ]
        ),
        .executableTarget(
            name: "kvscrubd",
            dependencies: [
                "KVCFormat",
                "KVScrubControl",
                "KVScrubDaemon",
                "KVScrubSystemd",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // What the engine simulator, the tests and the benchmarks share: synthetic
        // DSV4 payloads and a seeded engine workload, built on the format module only.
        .target(
            name: "KVCSimulation",
            dependencies: ["KVCFormat"]
        ),
        .executableTarget(
            name: "kvc-engine-sim",
            dependencies: [
                "KVCFormat",
                "KVCSimulation",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "KVCFormatTests",
            dependencies: ["KVCFormat", "KVCSimulation", "CReferenceScore", "CReferenceKVC",
                           .product(name: "NIOConcurrencyHelpers", package: "swift-nio")],
            resources: [.copy("Golden")]
        ),
        // The engine's own eviction score, compiled from its C source, so parity is
        // checked against the real formula and not against our reading of it.
        .target(name: "CReferenceScore", path: "Tests/CReferenceScore"),
        // An independent C reference of the v2 header CRC, store, touch, tool-map rewrite and
        // load checks, written from kvc-format.md revision 2; cross-tested against KVCFormat.
        .target(name: "CReferenceKVC", path: "Tests/CReferenceKVC"),
        .testTarget(
            name: "KVScrubDaemonTests",
            dependencies: ["KVScrubDaemon", "KVScrubControl", "KVScrubSystemd", "KVCFormat", "KVCSimulation", "CLinux",
                           .product(name: "NIOEmbedded", package: "swift-nio"),
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        .testTarget(
            name: "EndToEndTests",
            // The executables are dependencies so `swift test` builds them; the
            // tests run them as real processes and never import them.
            dependencies: ["KVCFormat", "KVCSimulation", "KVScrubControl", "KVScrubDaemon", "kvscrubd", "kvc-engine-sim",
                           .product(name: "NIOConcurrencyHelpers", package: "swift-nio")]
        ),
    ]
)
