/// Which payload ABI (header byte 20) the engine beside us reads, and how that
/// was decided (kvc-format.md revision 2, "Engine generations").
///
/// Why this is a choice and not a constant: three engine generations write
/// KVC files. Upstream ds4 with PR #146 writes byte 20 as 0 and never reads
/// it; the shared-kvstore engine writes 2 and refuses anything else; later
/// forks write other values, some with another layout under the same magic.
/// A file is usable or not only relative to the engine that runs, so the
/// verdict "incompatible" needs the ABI in force. `auto` takes it from the
/// engine's own most recent work: the latest arrival while the daemon runs,
/// and at start-up (or offline) the file with the newest `created_at` whose
/// header holds. With no such file there is nothing to judge against, and no
/// file is called incompatible for its ABI.
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

    /// The ABI in force and the sentence that says where it came from.
    public struct Resolution: Sendable, Equatable, Codable {
        /// nil: no checkpoint to learn from yet; no file is incompatible for its ABI.
        public var abi: UInt8?
        /// "configured", "newest checkpoint", "latest arrival" or "none yet".
        public var source: String
        /// The file it was learned from, for `auto`.
        public var file: String?

        public init(abi: UInt8?, source: String, file: String? = nil) {
            self.abi = abi
            self.source = source
            self.file = file
        }

        public var description: String {
            guard let abi else { return "unknown (no checkpoint to learn it from yet)" }
            let gen = abi == KVCHeader.pr146PayloadABI ? " (upstream ds4 / PR #146)" :
                abi == KVCHeader.kvstorePayloadABI ? " (shared kvstore)" : ""
            return "\(abi)\(gen), \(source)" + (file.map { " \($0)" } ?? "")
        }
    }

    /// Whether a header can tell us which engine wrote it: a known version,
    /// the engine's own sanity rules, and for v2 a header CRC that holds.
    public static func isTrustworthy(_ h: KVCHeader) -> Bool {
        guard h.version == 1 || h.version == 2, h.tokens != 0, h.quantBits == 2 || h.quantBits == 4 else { return false }
        return h.version == 1 || h.computedHeaderCRC == h.headerCRC
    }

    /// Resolves against a set of checkpoint headers (the start-up scan, or the files `verify` was given).
    public func resolve(headers: [(name: String, header: KVCHeader)]) -> Resolution {
        if case .fixed(let n) = self { return Resolution(abi: n, source: "configured") }
        let newest = headers.filter { EngineABI.isTrustworthy($0.header) }
            .max { ($0.header.createdAt, $0.name) < ($1.header.createdAt, $1.name) }
        guard let newest else { return Resolution(abi: nil, source: "none yet") }
        return Resolution(abi: newest.header.payloadABI, source: "newest checkpoint", file: newest.name)
    }

    public func resolve(entries: [CacheEntry]) -> Resolution {
        resolve(headers: entries.compactMap { e in e.header.map { (e.fileName, $0) } })
    }
}
