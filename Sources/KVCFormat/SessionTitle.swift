/// ds4-agent's session-title trailer (ext_flags bit 3): u32 title length and
/// the title bytes, after the payload (`agent_kv_write_title_trailer`). A
/// titled session is named after SHA-1(title bytes || created_at as 8
/// little-endian bytes), not after its text (`agent_session_identity_sha`),
/// so the name stays the same while the transcript grows across saves.
public enum SessionTitle {
    public enum Parse: Sendable, Equatable {
        /// The title, and how many trailer bytes it used (4 + its length).
        case title([UInt8], used: UInt64)
        case malformed(String)
    }

    /// Longest title read into memory; a longer length field is reported, not allocated.
    public static let maximumBytes: UInt64 = 1 << 20

    /// Reads the trailer through `read` (bytes at an offset within the trailer; nil on a short read).
    static func read(length: UInt64, _ read: (UInt64, Int) throws -> [UInt8]?) rethrows -> Parse {
        guard length >= 4, let lb = try read(0, 4) else {
            return .malformed("session title trailer is \(length) bytes, shorter than its 4-byte length")
        }
        let n = UInt64(lb.withUnsafeBytes { LE.u32($0, 0) })
        guard n <= length - 4 else {
            return .malformed("session title trailer claims \(n) bytes; \(length - 4) follow the length")
        }
        guard n <= maximumBytes else { return .malformed("session title of \(n) bytes is longer than kvscrubd reads") }
        guard n > 0 else { return .title([], used: 4) }
        guard let t = try read(4, Int(n)) else { return .malformed("session title trailer ended early") }
        return .title(t, used: 4 + n)
    }

    /// SHA-1 (lower-case hex) of the title followed by created_at as 8 little-endian bytes.
    public static func identity(title: [UInt8], createdAt: UInt64) -> String {
        var b = title
        for i in 0..<8 { b.append(UInt8(truncatingIfNeeded: createdAt >> (8 * UInt64(i)))) }
        var d = TextDigest()
        b.withUnsafeBytes { d.update($0) }
        return d.hex()
    }

    /// The trailer's bytes for `title`.
    public static func encoded(_ title: [UInt8]) -> [UInt8] {
        var b: [UInt8] = []
        LE.append32(UInt32(title.count), to: &b)
        return b + title
    }
}
