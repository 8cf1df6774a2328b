#if canImport(Glibc)
import Glibc
#endif

/// Checksums kept for a checkpoint that carries none of its own (v1).
///
/// kvc-format.md revision 2: the engine never rewrites a checkpoint's text or
/// payload in place. A touch rewrites the header, a tool-map rewrite the
/// trailer and the header; a new store is a new inode renamed over the name.
/// So the CRC32C of the text and of the payload, taken once from a read that
/// found the file sound, stay valid for as long as the same inode holds the
/// same text and payload lengths and the same `created_at`: a later read that
/// finds other bytes there has found damage, exactly as a v2 file's own CRC
/// fields would show it. That is what ZFS does for applications that write no
/// checksums: it keeps them itself.
///
/// What a record cannot prove: that the file was sound when it was recorded.
/// A v1 file damaged before it was first seen is recorded as it was; only
/// its structure (the SHA-1 of the text against the name, the payload prefix)
/// spoke for it then. And it proves nothing about a different file: the key
/// (`Key`) must match the file in hand, field for field, before the
/// checksums are compared; a file the engine replaced gets a new record.
public struct RecordedChecksum: Sendable, Equatable, Codable {
    /// Which file, in which life, the checksums belong to.
    public struct Key: Sendable, Equatable, Hashable, Codable {
        public var device: UInt64
        public var inode: UInt64
        public var textBytes: UInt32
        public var payloadBytes: UInt64
        public var createdAt: UInt64

        public init(device: UInt64, inode: UInt64, textBytes: UInt32, payloadBytes: UInt64, createdAt: UInt64) {
            self.device = device
            self.inode = inode
            self.textBytes = textBytes
            self.payloadBytes = payloadBytes
            self.createdAt = createdAt
        }

        /// The key of the file a header was read from.
        public init(identity: FileIdentity, header: KVCHeader) {
            self.init(device: identity.device, inode: identity.inode, textBytes: header.textBytes,
                      payloadBytes: header.payloadBytes, createdAt: header.createdAt)
        }
    }

    public var key: Key
    public var textCRC: UInt32
    public var payloadCRC: UInt32
    /// When the record was taken (Unix seconds), for the report that cites it.
    public var recordedAt: Double

    public init(key: Key, textCRC: UInt32, payloadCRC: UInt32, recordedAt: Double) {
        self.key = key
        self.textCRC = textCRC
        self.payloadCRC = payloadCRC
        self.recordedAt = recordedAt
    }

    /// "2026-11-27 14:03 UTC": how a problem cites the record.
    public var recordedAtText: String {
        let t = time_t(recordedAt)
        var tmv = tm()
        var copy = t
        gmtime_r(&copy, &tmv)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(tmv.tm_year + 1900)-\(two(tmv.tm_mon + 1))-\(two(tmv.tm_mday)) \(two(tmv.tm_hour)):\(two(tmv.tm_min)) UTC"
    }
}

/// What a v1 file's text and payload hashed to in one verification, with the
/// key they belong to: what the daemon records when it has no record yet.
public struct BodyChecksums: Sendable, Equatable {
    public var key: RecordedChecksum.Key
    public var textCRC: UInt32
    public var payloadCRC: UInt32

    public func recorded(at: Double) -> RecordedChecksum {
        RecordedChecksum(key: key, textCRC: textCRC, payloadCRC: payloadCRC, recordedAt: at)
    }
}
