import CYAML

/// The config file's shape, read with Debian's libyaml: one YAML document that
/// is a mapping of plain keys to single scalar values.
///
/// Why by hand over libyaml's event parser, and not a Swift YAML package:
/// the package that does this (Yams) compiles its own copy of libyaml into
/// the binary, which Debian forbids (lintian: embedded-library) and which
/// keeps Debian's security updates from reaching it. What kvscrubd needs of
/// YAML is small: the event stream is read up to the first thing that is not
/// a key or a scalar value, so nesting and aliases are refused before they
/// cost anything, and every scalar keeps its own text (`socket_mode: 0660`
/// stays "0660", never YAML 1.1's integer 432).
struct FlatYAMLMapping: Sendable {
    /// One `key: value` line, in file order (a repeated key appears twice; the later wins when applied).
    struct Entry: Sendable, Equatable {
        var key: String
        /// The scalar's text; "" for an empty value or a plain null (`~`, `null`).
        var value: String
        /// 1-based line of the key.
        var line: Int
    }

    /// Why a text is not such a mapping; `line` is 1-based, nil when libyaml gives none.
    struct ParseError: Error, Sendable, CustomStringConvertible {
        var line: Int?
        var message: String
        var description: String { line.map { "line \($0): \(message)" } ?? message }
    }

    var entries: [Entry]

    /// Parses `text`; an empty document (or one of comments only) is an empty mapping.
    init(parsing text: String) throws(ParseError) {
        entries = []
        // libyaml asserts on a null input pointer, which an empty buffer may give.
        if text.utf8.isEmpty { return }
        // On the heap: libyaml keeps pointers into its parser struct between calls.
        let parser = UnsafeMutablePointer<yaml_parser_t>.allocate(capacity: 1)
        parser.initialize(to: yaml_parser_t())
        defer { parser.deinitialize(count: 1); parser.deallocate() }
        guard yaml_parser_initialize(parser) == 1 else { throw ParseError(line: nil, message: "libyaml could not start (out of memory)") }
        defer { yaml_parser_delete(parser) }
        let bytes = Array(text.utf8)
        var out: [Entry] = []
        try bytes.withUnsafeBufferPointer { (buf) throws(ParseError) in
            yaml_parser_set_input_string(parser, buf.baseAddress, buf.count)
            let reader = EventReader(parser: parser)
            try reader.expect(YAML_STREAM_START_EVENT)
            let first = try reader.next()
            if first.type == YAML_STREAM_END_EVENT { return }
            guard first.type == YAML_DOCUMENT_START_EVENT else { throw reader.unexpected(first) }
            let top = try reader.next()
            switch top.type {
            case YAML_MAPPING_START_EVENT: break
            case YAML_SCALAR_EVENT where top.value.isEmpty && top.plain:
                // A document with nothing in it (comments only).
                try reader.expect(YAML_DOCUMENT_END_EVENT)
                try reader.expectEnd()
                return
            default:
                throw ParseError(line: top.line, message: "expected a mapping of settings (key: value lines)")
            }
            while true {
                let k = try reader.next()
                if k.type == YAML_MAPPING_END_EVENT { break }
                guard k.type == YAML_SCALAR_EVENT else {
                    throw ParseError(line: k.line, message: "a key that is not plain text")
                }
                let v = try reader.next()
                guard v.type == YAML_SCALAR_EVENT else {
                    let what = v.type == YAML_ALIAS_EVENT ? "an alias" : "a list or a mapping"
                    throw ParseError(line: v.line, message: "\(k.value): expected a single value, not \(what)")
                }
                let isNull = v.plain && ["", "~", "null", "Null", "NULL"].contains(v.value)
                out.append(Entry(key: k.value, value: isNull ? "" : v.value, line: k.line ?? 0))
            }
            try reader.expect(YAML_DOCUMENT_END_EVENT)
            try reader.expectEnd()
        }
        entries = out
    }
}

/// libyaml's events as small Swift values: each event is copied out and freed at once.
private struct EventReader {
    struct Event {
        var type: yaml_event_type_t
        var value: String
        var plain: Bool
        var line: Int?
    }

    let parser: UnsafeMutablePointer<yaml_parser_t>

    init(parser: UnsafeMutablePointer<yaml_parser_t>) { self.parser = parser }

    func next() throws(FlatYAMLMapping.ParseError) -> Event {
        var e = yaml_event_t()
        guard yaml_parser_parse(parser, &e) == 1 else {
            let p = parser.pointee
            let problem = p.problem.map { String(cString: $0) } ?? "unknown error"
            let context = p.context.map { String(cString: $0) + ": " } ?? ""
            throw .init(line: Int(p.problem_mark.line) + 1, message: "not valid YAML: \(context)\(problem)")
        }
        defer { yaml_event_delete(&e) }
        var value = ""
        var plain = false
        if e.type == YAML_SCALAR_EVENT {
            let s = e.data.scalar
            value = String(decoding: UnsafeBufferPointer(start: s.value, count: Int(s.length)), as: UTF8.self)
            plain = s.style == YAML_PLAIN_SCALAR_STYLE
        }
        return Event(type: e.type, value: value, plain: plain, line: Int(e.start_mark.line) + 1)
    }

    func expect(_ type: yaml_event_type_t) throws(FlatYAMLMapping.ParseError) {
        let e = try next()
        guard e.type == type else { throw unexpected(e) }
    }

    /// After the one document: only the stream's end (a second document is refused).
    func expectEnd() throws(FlatYAMLMapping.ParseError) {
        let e = try next()
        guard e.type == YAML_STREAM_END_EVENT else {
            throw .init(line: e.line, message: "more than one YAML document; the config is one mapping")
        }
    }

    func unexpected(_ e: Event) -> FlatYAMLMapping.ParseError {
        .init(line: e.line, message: "expected a mapping of settings (key: value lines)")
    }
}
