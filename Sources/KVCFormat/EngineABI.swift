/// Which generation the engine beside us is (kvc-format.md revision 3,
/// "Engine generations"), and how that was decided.
///
/// Why this is a choice and not a constant: every generation of ds4 writes
/// KVC files under the same magic, and a file is usable or not only relative
/// to the engine that runs. The verdict "incompatible" needs the generation
/// in force. `auto` takes it from the engine's own most recent work: the
/// latest arrival while the daemon runs, and at start-up (or offline) the
/// newest file whose header holds and whose payload opens with the DSV4
/// prefix. An operator can pin the payload ABI (`engine_payload_abi`), the
/// payload version (`engine_payload_version`), or both. With nothing to learn
/// from, no file is incompatible for its generation, and the payload rules
/// that only hold within the running generation are not applied.
public enum EngineABI: Sendable, Equatable, CustomStringConvertible {
    case auto
    case fixed(UInt8)

    /// Parses `auto` or a number 0...255 (the setting and the `--engine-abi` flag).
    public init?(parsing text: String) {
        if text == "auto" { self = .auto; return }
        guard let n = UInt8(text) else { return nil }
        self = .fixed(n)
    }

    public var description: String {
        switch self {
        case .auto: return "auto"
        case .fixed(let n): return "\(n)"
        }
    }

    /// The generation in force and the sentence that says where it came from.
    public struct Resolution: Sendable, Equatable, Codable {
        /// nil: no checkpoint to learn from yet; no file is incompatible for its generation.
        public var generation: Generation?
        /// "configured", "newest checkpoint", "latest arrival" or "none yet".
        public var source: String
        /// The file it was learned from, for `auto`.
        public var file: String?
        /// Said beside it: why nothing could be learned, or that the newest files are of a layout nobody here knows.
        public var note: String?

        public init(generation: Generation?, source: String, file: String? = nil, note: String? = nil) {
            self.generation = generation
            self.source = source
            self.file = file
            self.note = note
        }

        /// The payload ABI in force (header byte 20), when known.
        public var abi: UInt8? { generation?.payloadABI }
        public var payloadVersion: UInt32? { generation?.payloadVersion }

        public var description: String {
            guard let g = generation else {
                return "unknown (" + (note ?? "no checkpoint to learn it from yet") + ")"
            }
            return "\(g), \(source)" + (file.map { " \($0)" } ?? "") + (note.map { "; \($0)" } ?? "")
        }
    }

    /// Whether a header can tell us which engine wrote it: a known layout,
    /// the engine's own sanity rules, and for v2 a header CRC that holds.
    public static func isTrustworthy(_ h: KVCHeader) -> Bool {
        guard h.version == 1 || h.version == 2, h.tokens != 0, h.quantBits == 2 || h.quantBits == 4 else { return false }
        return h.version == 1 || h.computedHeaderCRC == h.headerCRC
    }
}

/// The operator's choice of generation: `engine_payload_abi` and
/// `engine_payload_version` (each `auto` or a number).
public struct GenerationSetting: Sendable, Equatable, CustomStringConvertible {
    public var abi: EngineABI
    /// nil: auto.
    public var payloadVersion: UInt32?

    public init(abi: EngineABI = .auto, payloadVersion: UInt32? = nil) {
        self.abi = abi
        self.payloadVersion = payloadVersion
    }

    public static let auto = GenerationSetting()

    /// Parses `auto` or a number (the setting and the `--engine-payload-version` flag).
    public static func parsePayloadVersion(_ text: String) -> UInt32?? {
        if text == "auto" { return .some(nil) }
        guard let n = UInt32(text) else { return nil }
        return .some(n)
    }

    public var description: String {
        "payload ABI \(abi), payload version \(payloadVersion.map(String.init) ?? "auto")"
    }

    /// One file the generation can be learned from.
    public struct Candidate: Sendable {
        public var name: String
        public var header: KVCHeader
        public var payload: PayloadTag
        public init(name: String, header: KVCHeader, payload: PayloadTag) {
            self.name = name
            self.header = header
            self.payload = payload
        }

        /// A file that says which engine wrote it: a trustworthy header, and a payload that opens
        /// with the DSV4 prefix (or none at all: a stripped session).
        var isTrustworthy: Bool {
            guard EngineABI.isTrustworthy(header) else { return false }
            switch payload {
            case .dsv4: return true
            case .absent: return header.payloadBytes == 0
            case .otherKind, .foreign: return false
            }
        }

        /// The generation of the engine that wrote it. An engine writing ABI 0 may be PR #146's, which
        /// reads v2 as well as v1, and nothing in a v1 file says which: such an engine is taken to read both.
        public var generation: Generation {
            var g = Generation(header: header, payload: payload)
            g.fileVersion = max(g.fileVersion, Generation.knownFileVersion(abi: g.payloadABI))
            return g
        }
    }

    /// Resolves against a set of checkpoints (the start-up scan, or the files `verify` was given).
    public func resolve(_ candidates: [Candidate]) -> EngineABI.Resolution {
        let trusted = candidates.filter(\.isTrustworthy)
        func newest(_ c: [Candidate]) -> Candidate? {
            // A file with a payload version says more than a stripped session: prefer those.
            c.max { a, b in
                let ka = (a.payload.dsv4Version != nil ? 1 : 0, a.header.createdAt, a.name)
                let kb = (b.payload.dsv4Version != nil ? 1 : 0, b.header.createdAt, b.name)
                return ka < kb
            }
        }
        switch (abi, payloadVersion) {
        case (.fixed(let n), .some(let pv)):
            let learned = newest(trusted.filter { $0.header.payloadABI == n && $0.payload.dsv4Version == pv })
            return .init(generation: Generation(fileVersion: learned?.header.version ?? Generation.knownFileVersion(abi: n),
                                                payloadABI: n, payloadVersion: pv), source: "configured")
        case (.fixed(let n), nil):
            if let c = newest(trusted.filter { $0.header.payloadABI == n }), c.payload.dsv4Version != nil {
                return .init(generation: c.generation, source: "configured", file: c.name)
            }
            return .init(generation: Generation(fileVersion: Generation.knownFileVersion(abi: n), payloadABI: n,
                                                payloadVersion: Generation.knownPayloadVersion(abi: n)), source: "configured")
        case (.auto, .some(let pv)):
            if let c = newest(trusted.filter { $0.payload.dsv4Version == pv }) {
                return .init(generation: c.generation, source: "configured", file: c.name)
            }
            return .init(generation: nil, source: "none yet", note: "no checkpoint with payload version \(pv) to learn the ABI from")
        case (.auto, nil):
            if let c = newest(trusted) { return .init(generation: c.generation, source: "newest checkpoint", file: c.name) }
            let unknownLayouts = candidates.filter { $0.header.version == 2 && !EngineABI.isTrustworthy($0.header) && $0.header.payloadABI != 0 }
            if !unknownLayouts.isEmpty {
                return .init(generation: nil, source: "none yet",
                             note: "the checkpoints here are of a layout kvscrubd does not know (version 2 with byte 20 = \(unknownLayouts[0].header.payloadABI)): none is judged")
            }
            return .init(generation: nil, source: "none yet")
        }
    }

    public func resolve(entries: [CacheEntry]) -> EngineABI.Resolution {
        resolve(entries.compactMap { e in e.header.map { Candidate(name: e.fileName, header: $0, payload: e.payloadTag) } })
    }
}
