/// A checker's conclusion about one path (kvc-format.md, "What a checker concludes").
public enum Verdict: String, Codable, Sendable, CaseIterable {
    case ok, corrupt, incompatible, ignored
}

/// Where in a file a problem lies. `name` is the file name not matching the
/// text's SHA-1; `size` is the file being shorter than its header says.
public enum Region: String, Codable, Sendable, CaseIterable {
    case header, text, payload, trailer, name, size
}

public enum Checksums: String, Codable, Sendable {
    /// v2: the four CRC32C fields were recomputed and compared.
    case crc32c
    /// v1: the text and payload were compared with checksums kvscrubd recorded
    /// when it first saw the file (`RecordedChecksum`); the header has none.
    case recorded
    /// v1 (or no readable header): only the structure was checked; nothing
    /// here claims a checksum was verified.
    case none
}

public struct Problem: Codable, Sendable, Equatable, CustomStringConvertible {
    public enum Severity: String, Codable, Sendable {
        /// Proves damage.
        case corrupt
        /// Not for this engine; not damage.
        case incompatible
        /// Worth telling, changes no verdict.
        case warning
    }

    public var region: Region
    public var severity: Severity
    public var detail: String
    public var expectedCRC: UInt32?
    public var actualCRC: UInt32?

    public init(_ region: Region, _ severity: Severity, _ detail: String,
                expectedCRC: UInt32? = nil, actualCRC: UInt32? = nil) {
        self.region = region
        self.severity = severity
        self.detail = detail
        self.expectedCRC = expectedCRC
        self.actualCRC = actualCRC
    }

    public var description: String {
        var s = "\(region): \(detail)"
        if let e = expectedCRC, let a = actualCRC { s += " (expected \(hex32(e)), actual \(hex32(a)))" }
        return s
    }
}

/// Identity of the inode that was examined, so a later removal can prove the
/// path still names the same file.
public struct FileIdentity: Sendable, Equatable, Hashable, Codable {
    public var device: UInt64
    public var inode: UInt64
    public init(device: UInt64, inode: UInt64) { self.device = device; self.inode = inode }
}

public struct VerifyReport: Sendable {
    public var path: String
    public var name: String
    public var verdict: Verdict
    /// The version byte, when the file had a readable one.
    public var version: UInt8?
    public var checksums: Checksums
    public var problems: [Problem]
    public var header: KVCHeader?
    /// The file's own generation (file version, payload ABI, payload version), when its layout is known.
    public var generation: Generation?
    public var fileSize: UInt64
    public var identity: FileIdentity?
    /// Why a path was ignored; nil for checkpoints.
    public var note: String?
    /// The file's stamp before the first byte and after the last byte of the
    /// read the verdict comes from (nil for ignored paths).
    public var before: FileStamp?
    public var after: FileStamp?
    /// How many bytes the check read.
    public var bytesRead: UInt64
    /// v1, when the verifier was asked for them: the text's and payload's CRC32C and the key
    /// they belong to, ready to be recorded.
    public var bodyChecksums: BodyChecksums?

    public var corruptProblems: [Problem] { problems.filter { $0.severity == .corrupt } }

    /// Nothing wrote to, truncated or replaced the file while it was read:
    /// the verdict describes one state of it. Only such a verdict can count
    /// towards a removal.
    public var unchangedDuringRead: Bool { before != nil && before == after }
}

/// A CRC as kvscrubd prints it everywhere: 0x and eight hex digits.
public func hex32(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - s.count)) + s
}
