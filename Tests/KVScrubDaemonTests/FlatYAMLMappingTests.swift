import Testing
@testable import KVScrubDaemon

/// The config file's parser over Debian's libyaml: what it accepts, what it
/// keeps verbatim, and what it refuses, with the line.
struct FlatYAMLMappingTests {
    private func parse(_ text: String) throws -> [FlatYAMLMapping.Entry] { try FlatYAMLMapping(parsing: text).entries }

    @Test func flatMapping_keepsEachScalarsOwnText_andItsLine() throws {
        let e = try parse("""
            # a comment
            budget_mb: 4096
            socket_mode: 0660
            cache_dir: "/var/cache/ds4/kv"
            removal_brake: '5,5%'
            dry_run: false
            """)
        #expect(e.map(\.key) == ["budget_mb", "socket_mode", "cache_dir", "removal_brake", "dry_run"])
        #expect(e.map(\.value) == ["4096", "0660", "/var/cache/ds4/kv", "5,5%", "false"])
        #expect(e.map(\.line) == [2, 3, 4, 5, 6])
    }

    @Test func plainNulls_areEmpty_butAQuotedNullIsText() throws {
        let e = try parse("a: ~\nb: null\nc:\nd: \"null\"\n")
        #expect(e.map(\.value) == ["", "", "", "null"])
    }

    @Test(arguments: ["", "\n", "# only a comment\n", "---\n"])
    func emptyDocuments_areAnEmptyMapping(text: String) throws {
        #expect(try parse(text).isEmpty)
    }

    @Test func aRepeatedKey_appearsTwice_inFileOrder() throws {
        let e = try parse("budget_mb: 1\nbudget_mb: 2\n")
        #expect(e.map(\.value) == ["1", "2"])
    }

    @Test(arguments: [
        ("- a\n- b\n", 1, "expected a mapping"),
        ("just text\n", 1, "expected a mapping"),
        ("a: 1\nb: [1, 2]\n", 2, "b: expected a single value, not a list or a mapping"),
        ("a: 1\nb:\n  c: 2\n", 3, "b: expected a single value"),
        ("a: &x 1\nb: *x\n", 2, "b: expected a single value, not an alias"),
        ("[a]: 1\n", 1, "a key that is not plain text"),
        ("a: 1\n---\nb: 2\n", 2, "more than one YAML document"),
        ("budget_mb: [\n", 1, "budget_mb: expected a single value"),
        ("a: 1\nb: @x\n", 2, "not valid YAML"),
        ("a: 1\n  b: 2\n", 2, "not valid YAML"),
        ("a: \"unterminated\n", 2, "not valid YAML"),
    ])
    func refused_withTheLine(text: String, line: Int, message: String) {
        do {
            _ = try FlatYAMLMapping(parsing: text)
            Issue.record("accepted: \(text.debugDescription)")
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.description.contains(message), "\(error)")
        }
    }

    @Test func deepNesting_isRefusedAtTheFirstLevel_withoutReadingTheRest() throws {
        // 100,000 nested lists: refused at the first '[' of the value, not parsed.
        let text = "a: " + String(repeating: "[", count: 100_000)
        #expect(throws: FlatYAMLMapping.ParseError.self) { try FlatYAMLMapping(parsing: text) }
    }
}
