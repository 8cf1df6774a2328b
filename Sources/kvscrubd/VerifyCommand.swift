import ArgumentParser
import Foundation
import KVCFormat
import KVScrubControl
import KVScrubDaemon

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check checkpoint files and report ok / corrupt / incompatible / ignored. Never modifies anything.",
        discussion: """
            PATH is a file or a directory (its entries, not recursive). v2 files have all four CRC32C fields
            recomputed; v1 files carry no checksum, so only their structure is checked ("checksums: none (v1)").
            With --recorded, v1 files are also compared with the checksums the daemon recorded when it first
            saw them (read from its state database, read-only): a text or payload that differs is corrupt
            ("checksums: recorded"). A record counts only for the very file it was taken from (same inode,
            lengths and created_at); a file damaged before the daemon first saw it was recorded as it was.
            Only byte evidence makes a file corrupt: a CRC that fails, a recorded checksum that differs, a file
            shorter than its header says, a name that is not the SHA-1 of its text (of its title and created_at for
            a titled ds4-agent session), and within the engine's own generation a payload prefix that disagrees with
            its header. Files of another generation (file version, payload ABI, payload version; see the options
            below), of an unknown layout or not KVC at all are incompatible, never corrupt.
            ds4-agent's saved sessions (~/.ds4/kvcache: titled sessions, stripped ones, sysprompt.kv) are judged
            as ds4-agent reads them. Each file's inode, size, mtime and ctime are compared before and after its read: a file
            the engine rewrote meanwhile is read again, and a verdict from a disturbed read is marked as such.
            On a terminal, a progress line on stderr shows the files and bytes read so far.
            Exit status: 0 nothing corrupt; 1 at least one file corrupt; 2 usage or I/O error (and nothing corrupt).
            """)

    @Flag(name: .long, help: "Print one JSON object instead of a table.")
    var json = false

    @Flag(name: [.short, .long], help: "Print only the problems: corrupt files, warnings and errors (the exit status says the rest).")
    var quiet = false

    @OptionGroup var abi: EngineABIOption

    @Flag(name: .long, help: "Compare v1 files with the checksums the daemon recorded (its state database, opened read-only).")
    var recorded = false

    @Option(name: .long, help: ArgumentHelp("The daemon's state directory, for --recorded.", valueName: "dir"))
    var stateDir = DaemonConfig().stateDir

    @Argument(help: "Checkpoint files or cache directories.")
    var paths: [String]

    func run() throws {
        let items = PathExpansion.expand(paths)
        let engine = abi.resolve(items)
        var records: [String: RecordedChecksum] = [:]
        if recorded {
            do { records = try StateDatabase.readOnly(directory: stateDir).records() } catch {
                Output.error("cannot read the recorded checksums in \(stateDir): \(error)")
                throw ExitCode(2)
            }
            if !json && !quiet { print("recorded checksums: \(records.count) in \(stateDir)/state.sqlite") }
        }
        var files: [FileJSON] = []
        var errors: [ErrorJSON] = []
        var summary = SummaryJSON()
        if !json && !quiet { print("engine generation: \(engine.description)") }
        var progress = VerifyProgress(items: items)
        for (i, item) in items.enumerated() {
            progress.show()
            defer { progress.done(i) }
            if let e = item.error { errors.append(ErrorJSON(path: item.path, error: e)); continue }
            do {
                let name = (item.path as NSString).lastPathComponent
                let verifier = recorded ? Verifier(engine: engine.generation, recorded: records[name]) : Verifier(engine: engine.generation)
                let r = try verifier.verify(path: item.path)
                summary.add(r.verdict)
                files.append(FileJSON(r))
                if !json && (!quiet || r.verdict == .corrupt || !r.problems.isEmpty) { progress.clear(); printHuman(r) }
            } catch {
                errors.append(ErrorJSON(path: item.path, error: "\(error)"))
            }
        }
        progress.clear()
        if json {
            print(Output.json(ReportJSON(files: files, summary: summary, errors: errors, engine_abi: engine)))
        } else {
            for e in errors { Output.error(e.error) }
            if !quiet {
                print("\(files.count) files: \(summary.ok) ok, \(summary.corrupt) corrupt, \(summary.incompatible) incompatible, \(summary.ignored) ignored" +
                      (errors.isEmpty ? "" : ", \(errors.count) unreadable"))
            }
        }
        if summary.corrupt > 0 { throw ExitCode(1) }
        if !errors.isEmpty { throw ExitCode(2) }
    }

    /// "verifying 1234 of 5000 files, 1.2 GiB of 4.0 GiB, 850.3 MiB/s" on stderr, when it is a terminal,
    /// at most ten times a second.
    struct VerifyProgress {
        let line = ProgressLine(fd: STDERR_FILENO)
        let files: Int
        /// Each item's size, for a terminal only (a stat per file is cheap, but not free).
        let sizes: [UInt64]
        let bytes: UInt64
        var filesDone = 0
        var bytesDone: UInt64 = 0
        let started = ContinuousClock.now
        var shown = ContinuousClock.now - .seconds(1)

        init(items: [PathExpansion.Item]) {
            sizes = line.enabled ? items.map { (try? FileStatus.of(path: $0.path))?.size ?? 0 } : []
            bytes = sizes.reduce(0, +)
            files = items.count
        }

        mutating func show() {
            guard line.enabled, ContinuousClock.now - shown >= .milliseconds(100) else { return }
            shown = .now
            let seconds = (ContinuousClock.now - started) / .seconds(1)
            let rate = seconds > 0.5 ? ", \(ByteText.short(UInt64(Double(bytesDone) / seconds)))/s" : ""
            line.show("verifying \(filesDone + 1) of \(files) files, \(ByteText.short(bytesDone)) of \(ByteText.short(bytes))" + rate)
        }

        /// Item `i` is done.
        mutating func done(_ i: Int) {
            filesDone += 1
            if line.enabled { bytesDone += sizes[i] }
        }

        func clear() { line.finish() }
    }

    private func printHuman(_ r: VerifyReport) {
        let version = r.version.map { "v\($0)" } ?? "-"
        let sums = r.verdict == .ignored ? "-" : (r.checksums == .none ? "none (v\(r.version ?? 1))" : r.checksums.rawValue)
        var line = Output.pad(r.verdict.rawValue, 13) + Output.pad(version, 5) + Output.pad(sums, 12) +
            Output.pad(r.verdict == .ignored ? "-" : Output.bytes(r.fileSize), 11) + r.path
        if let note = r.note { line += "  (\(note))" }
        print(line)
        for p in r.problems {
            var s = "    \(p.severity == .warning ? "warning" : p.severity.rawValue) in \(p.region.rawValue): \(p.detail)"
            if let e = p.expectedCRC, let a = p.actualCRC { s += " (expected \(Output.crc(e)), actual \(Output.crc(a)))" }
            print(s)
        }
        if r.verdict == .corrupt && !r.unchangedDuringRead {
            print("    note: the file changed while it was read (the engine may be rewriting it); verify it again")
        }
    }

    struct ProblemJSON: Encodable {
        var region: String
        var severity: String
        var detail: String
        var expected_crc: String?
        var actual_crc: String?
    }

    struct FileJSON: Encodable {
        var path: String
        var name: String
        var verdict: String
        var version: UInt8?
        /// The file's generation as `file version/payload ABI/payload version` (`-`: no payload version).
        var generation: String?
        var checksums: String
        var problems: [ProblemJSON]
        var size: UInt64
        var note: String?
        /// Identity, size, mtime and ctime were the same before and after the read.
        var unchanged_during_read: Bool

        init(_ r: VerifyReport) {
            path = r.path
            name = r.name
            verdict = r.verdict.rawValue
            version = r.version
            generation = r.generation?.key
            checksums = r.checksums.rawValue
            problems = r.problems.map {
                ProblemJSON(region: $0.region.rawValue, severity: $0.severity.rawValue, detail: $0.detail,
                            expected_crc: $0.expectedCRC.map(Output.crc), actual_crc: $0.actualCRC.map(Output.crc))
            }
            size = r.fileSize
            note = r.note
            unchanged_during_read = r.unchangedDuringRead
        }
    }

    struct SummaryJSON: Encodable {
        var ok = 0, corrupt = 0, incompatible = 0, ignored = 0
        mutating func add(_ v: Verdict) {
            switch v {
            case .ok: ok += 1
            case .corrupt: corrupt += 1
            case .incompatible: incompatible += 1
            case .ignored: ignored += 1
            }
        }
    }

    struct ErrorJSON: Encodable {
        var path: String
        var error: String
    }

    struct ReportJSON: Encodable {
        var files: [FileJSON]
        var summary: SummaryJSON
        var errors: [ErrorJSON]
        var engine_abi: EngineABI.Resolution
    }
}
