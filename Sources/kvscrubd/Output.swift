import ArgumentParser
import Foundation
import KVCFormat
import KVScrubControl

/// Printing helpers shared by the subcommands.
enum Output {
    static func json<T: Encodable>(_ value: T) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        guard let data = try? enc.encode(value) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    static func error(_ message: String) {
        FileHandle.standardError.write(Data(("kvscrubd: " + message + "\n").utf8))
    }

    /// 1536 -> "1.5 KiB": sizes a person reads at a glance.
    static func bytes(_ n: UInt64) -> String { ByteText.short(n) }

    static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
    }

    static func crc(_ v: UInt32) -> String { String(format: "0x%08x", v) }

    static func now() -> UInt64 { UInt64(Date().timeIntervalSince1970) }
}

/// Expands the command line's paths: files as given, directories one level
/// deep (every entry, so non-checkpoints show up as ignored), in name order.
enum PathExpansion {
    struct Item {
        var path: String
        /// Set when the path itself could not be examined.
        var error: String?
    }

    static func expand(_ paths: [String]) -> [Item] {
        var out: [Item] = []
        for p in paths {
            let st: FileStatus
            do { st = try FileStatus.of(path: p) } catch { out.append(Item(path: p, error: "\(error)")); continue }
            if st.isDirectory {
                do {
                    let dir = try CacheDirectory(path: p)
                    for name in try dir.names() { out.append(Item(path: dir.pathOf(name))) }
                } catch { out.append(Item(path: p, error: "\(error)")) }
            } else {
                out.append(Item(path: p))
            }
        }
        return out
    }
}

/// `--engine-abi` and `--engine-payload-version`, shared by `verify`, `evict` (and `run`, through its settings).
struct EngineABIOption: ParsableArguments {
    @Option(name: .customLong("engine-abi"), help: ArgumentHelp(
        "Payload ABI (header byte 20) of the engine that uses the cache: auto (the newest checkpoint's, by created_at, among those with a valid header and a DSV4 payload) or a number (2: ds4 from e8e8779; 0: ds4 before it and PR #146, which never read the byte). Files of another generation are incompatible, never corrupt.",
        valueName: "auto|N"))
    var engineABI: String = "auto"

    @Option(name: .customLong("engine-payload-version"), help: ArgumentHelp(
        "DSV4 payload version of the engine that uses the cache: auto (learned as --engine-abi is; with a pinned ABI, the version its generation writes) or a number (2: ds4 from e8e8779; 1 before it).",
        valueName: "auto|N"))
    var enginePayloadVersion: String = "auto"

    func validate() throws {
        guard EngineABI(parsing: engineABI) != nil else { throw ValidationError("--engine-abi must be auto or a number from 0 to 255, not '\(engineABI)'") }
        guard GenerationSetting.parsePayloadVersion(enginePayloadVersion) != nil else {
            throw ValidationError("--engine-payload-version must be auto or a number, not '\(enginePayloadVersion)'")
        }
    }

    var setting: GenerationSetting {
        GenerationSetting(abi: EngineABI(parsing: engineABI) ?? .auto,
                          payloadVersion: GenerationSetting.parsePayloadVersion(enginePayloadVersion) ?? nil)
    }

    /// The generation in force for a set of paths: their checkpoints decide under `auto`.
    func resolve(_ items: [PathExpansion.Item]) -> EngineABI.Resolution {
        let entries = items.compactMap { item -> CacheEntry? in
            guard item.error == nil, let st = try? FileStatus.of(path: item.path), st.isRegular,
                  CheckpointName.isCheckpoint(String(item.path.split(separator: "/").last ?? "")) else { return nil }
            return try? CacheEntry.read(path: item.path)
        }
        return setting.resolve(entries: entries)
    }
}
