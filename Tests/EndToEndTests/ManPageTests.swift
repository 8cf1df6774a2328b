import Foundation
import Testing

/// The man pages must match `--help`: every flag a subcommand accepts is
/// documented, and mandoc finds nothing to complain about.
@Suite struct ManPageTests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    static func manText(_ page: String) throws -> String {
        // Unescape roff hyphens so "\-\-budget\-mb" reads as "--budget-mb".
        try String(contentsOfFile: repo + "/man/" + page, encoding: .utf8).replacingOccurrences(of: "\\-", with: "-")
    }

    static func flags(in help: String) -> Set<String> {
        let regex = try! NSRegularExpression(pattern: "--[a-z][a-z0-9-]*")
        let ns = help as NSString
        return Set(regex.matches(in: help, range: NSRange(location: 0, length: ns.length)).map { ns.substring(with: $0.range) })
    }

    static func subcommands(of parent: [String] = []) async throws -> [String] {
        let help = try await Tool.run("kvscrubd", parent + ["--help"]).stdout
        guard let r = help.range(of: "SUBCOMMANDS:") else { return [] }
        return help[r.upperBound...].split(separator: "\n").compactMap { line in
            let t = line.trimmingCharacters(in: .whitespaces)
            guard line.hasPrefix("  "), !line.hasPrefix("   "), let w = t.split(separator: " ").first else { return nil }
            return String(w)
        }.filter { $0 != "help" && !$0.hasPrefix("See") }
    }

    @Test func everyFlagInHelp_isInTheManPage() async throws {
        let man = try Self.manText("kvscrubd.8")
        let subs = try await Self.subcommands()
        #expect(subs.contains("verify") && subs.contains("evict"))
        for sub in subs {
            let help = try await Tool.run("kvscrubd", [sub, "--help"])
            #expect(help.status == 0)
            #expect(man.contains("kvscrubd \(sub)") || man.contains(".SS \(sub)"), "subcommand \(sub) missing from kvscrubd(8) (subcommands: \(subs))")
            for flag in Self.flags(in: help.stdout) {
                #expect(man.contains(flag), "\(sub) \(flag) is in --help but not in kvscrubd(8)")
            }
            // Commands with their own subcommands (scrub start, ...): each documented, each flag too.
            for inner in try await Self.subcommands(of: [sub]) {
                let h = try await Tool.run("kvscrubd", [sub, inner, "--help"])
                #expect(h.status == 0)
                #expect(man.contains(".B \(inner)") || man.contains(".BI \(inner)"), "\(sub) \(inner) missing from kvscrubd(8)")
                for flag in Self.flags(in: h.stdout) {
                    #expect(man.contains(flag), "\(sub) \(inner) \(flag) is in --help but not in kvscrubd(8)")
                }
            }
        }
    }

    /// The options a command's --help lists as its own (option lines, not words in the descriptions).
    static func options(in help: String) -> Set<String> {
        Set(help.split(separator: "\n").compactMap { line -> String? in
            let t = line.trimmingCharacters(in: .whitespaces)
            guard t.hasPrefix("-") else { return nil }
            return t.split(whereSeparator: { $0 == " " || $0 == "," }).first { $0.hasPrefix("--") }.map(String.init)
        }).subtracting(["--help", "--version"])
    }

    @Test func synopsis_listsEveryOptionOfEveryCommand() async throws {
        let man = try Self.manText("kvscrubd.8")
        let synopsis = try #require(man.range(of: ".SH SYNOPSIS").flatMap { a in man.range(of: ".SH DESCRIPTION").map { man[a.upperBound..<$0.lowerBound] } })
        var checked = 0
        for sub in try await Self.subcommands() {
            var commands = [[sub]]
            await commands += try Self.subcommands(of: [sub]).map { [sub, $0] }
            for command in commands {
                for option in Self.options(in: try await Tool.run("kvscrubd", command + ["--help"]).stdout) {
                    #expect(synopsis.contains(option), "\(command.joined(separator: " ")) \(option) is not in kvscrubd(8)'s SYNOPSIS")
                    checked += 1
                }
            }
        }
        #expect(checked > 40)
    }

    @Test(arguments: ["kvscrubd.8", "kvc.5", "kvscrubd.conf.5", "kvc.h.3"])
    func mandocLint_isClean(page: String) async throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/mandoc")
        p.arguments = ["-T", "lint", "-W", "warning", Self.repo + "/man/" + page]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        await p.exited()
        #expect(p.terminationStatus == 0, "\(text)")
        #expect(text.isEmpty, "\(text)")
    }

    /// Each page as a terminal shows it (mandoc, 80 columns, formatting stripped): no line wider
    /// than the terminal, no mdoc macro left over in a man(7) page (they print as words), no
    /// words run together by an alternating-font macro (`.BR "scrub now" ), and at`).
    @Test(arguments: ["kvscrubd.8", "kvc.5", "kvscrubd.conf.5", "kvc.h.3"])
    func rendered_fitsEightyColumns_withoutLeftoverMacros_orRunTogetherWords(page: String) async throws {
        let r = try await Tool.runCapturing("/bin/sh", ["-c", "/usr/bin/mandoc -T utf8 -O width=80 '\(Self.repo)/man/\(page)' | col -bx"])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.count > 30)
        for (i, line) in lines.enumerated() {
            #expect(line.count <= 80, "\(page):\(i + 1) is \(line.count) columns: \(line)")
            let words = line.split(separator: " ")
            let macros = words.filter { ["Oo", "Oc", "Fl", "Ar", "Cm", "Op", "Nm", "Xr"].contains($0) }
            #expect(macros.isEmpty, "\(page):\(i + 1) shows mdoc macros \(macros): \(line)")
            #expect(line.range(of: #"[a-z0-9"]\),[a-z]"#, options: .regularExpression) == nil, "\(page):\(i + 1) runs words together: \(line)")
            #expect(!line.trimmingCharacters(in: .whitespaces).hasPrefix("."), "\(page):\(i + 1) shows a request: \(line)")
        }
    }

    @Test func formatDoc_andManPage_agreeOnTheLayoutOffsets() async throws {
        let doc = try String(contentsOfFile: Self.repo + "/docs/FORMAT.md", encoding: .utf8)
        let man = try Self.manText("kvc.5")
        // PR #146's v2: header_crc at 48, the data CRCs, text_bytes at 64 (v1 keeps text_bytes at 48).
        for (offset, field) in [(48, "header_crc"), (52, "text_crc"), (56, "payload_crc"), (60, "toolmap_crc"), (64, "text_bytes"),
                                (48, "text_bytes")] {
            #expect(doc.contains("| \(offset) | 4 | \(field) |"), "FORMAT.md: \(offset) \(field)")
            #expect(man.contains("\(offset)|4|\(field)|"), "kvc(5): \(offset) \(field)")
        }
        #expect(!doc.contains("trailer_crc") && !man.contains("trailer_crc"), "revision 1's field name")
    }
}
