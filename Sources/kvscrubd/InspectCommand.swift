import ArgumentParser
import Foundation
import KVCFormat

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Print every header field of checkpoint files and their eviction score.",
        discussion: """
            Reads only the prologue (52 bytes for v1, 68 for v2: header_crc at 48, text_crc, payload_crc, toolmap_crc,
            text_bytes at 64): only the v2 header CRC is checked; use `verify` for the rest.
            The score is ds4's eviction score (see kvc(5)) at --now, without an incoming checkpoint.
            Exit status: 0 success; 2 usage error or a path that could not be read.
            """)

    @Flag(name: .long, help: "Print one JSON object instead of text.")
    var json = false

    @Option(name: .long, help: ArgumentHelp("Score at this time (Unix seconds) instead of now.", valueName: "unix"))
    var now: UInt64?

    @Argument(help: "Checkpoint files or cache directories (non-checkpoint entries are skipped).")
    var paths: [String]

    func run() throws {
        let at = now ?? Output.now()
        var entries: [EntryJSON] = []
        var failed = false
        for item in PathExpansion.expand(paths) {
            if let e = item.error { Output.error(e); failed = true; continue }
            let name = String(item.path.split(separator: "/").last ?? "")
            guard CheckpointName.isCheckpoint(name) else { continue }
            // Only regular files are opened: a FIFO named like a checkpoint would block open(2) forever.
            if let st = try? FileStatus.of(path: item.path), !st.isRegular { Output.error("\(item.path): not a regular file; skipped"); continue }
            do {
                let e = try CacheEntry.read(path: item.path)
                let j = EntryJSON(path: item.path, entry: e, score: EvictionScore.score(e, now: at))
                entries.append(j)
                if !json { printHuman(j, entry: e) }
            } catch {
                Output.error("\(error)")
                failed = true
            }
        }
        if json { print(Output.json(["entries": entries])) }
        if failed { throw ExitCode(2) }
    }

    private func printHuman(_ j: EntryJSON, entry: CacheEntry) {
        print(j.path)
        guard let h = entry.header else {
            print("  unreadable header: \(entry.unusable ?? "?")  size: \(j.file_size)\n")
            return
        }
        let rows: [(String, String)] = [
            ("version", "\(h.version)"), ("quant_bits", "\(h.quantBits)"), ("reason", h.reason.name),
            ("ext_flags", String(format: "0x%02x", h.extFlags) + (h.hasToolMap ? " (tool map)" : "")),
            ("model_id", "\(h.modelID)"), ("tokens", "\(h.tokens)"), ("hits", "\(h.hits)"),
            ("ctx_size", "\(h.ctxSize)"), ("payload_abi", "\(h.payloadABI)"),
            ("created_at", "\(h.createdAt)"), ("last_used", "\(h.lastUsed)"),
            ("payload_bytes", "\(h.payloadBytes)"), ("text_bytes", "\(h.textBytes)"),
            ("file_size", "\(entry.fileSize) (\(Output.bytes(entry.fileSize)))"),
        ] + (h.version == 2 ? [("header_crc", Output.crc(h.headerCRC) + (h.computedHeaderCRC == h.headerCRC ? " (holds)" : " (computed \(Output.crc(h.computedHeaderCRC)): mismatch)")),
                               ("text_crc", Output.crc(h.textCRC)), ("payload_crc", Output.crc(h.payloadCRC)),
                               ("toolmap_crc", Output.crc(h.trailerCRC))] : [])
            + [("score", String(format: "%.9g", j.score) + (entry.unusable.map { " (unusable: \($0))" } ?? ""))]
        for (k, v) in rows { print("  " + Output.pad(k + ":", 15) + v) }
        print("")
    }

    struct EntryJSON: Encodable {
        var path: String
        var name: String
        var version: UInt8?
        var quant_bits: UInt8?
        var reason: String?
        var ext_flags: UInt8?
        var model_id: UInt8?
        var tokens: UInt32?
        var hits: UInt32?
        var ctx_size: UInt32?
        var payload_abi: UInt8?
        var created_at: UInt64?
        var last_used: UInt64?
        var payload_bytes: UInt64?
        var text_bytes: UInt32?
        var file_size: UInt64
        var score: Double
        var unusable: String?

        init(path: String, entry e: CacheEntry, score: Double) {
            self.path = path
            name = e.fileName
            let h = e.header
            version = h?.version
            quant_bits = h?.quantBits
            reason = h?.reason.name
            ext_flags = h?.extFlags
            model_id = h?.modelID
            tokens = h?.tokens
            hits = h?.hits
            ctx_size = h?.ctxSize
            payload_abi = h?.payloadABI
            created_at = h?.createdAt
            last_used = h?.lastUsed
            payload_bytes = h?.payloadBytes
            text_bytes = h?.textBytes
            file_size = e.fileSize
            self.score = score
            unusable = e.unusable
        }
    }
}
