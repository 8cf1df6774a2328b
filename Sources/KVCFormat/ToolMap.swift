/// The server's tool-id -> exact DSML map, stored after the payload when
/// ext_flags bit 0 is set: `KTM`, version 1, u32 count, then per entry u32 id
/// length, u32 DSML length, id bytes, DSML bytes, ending exactly at end of file.
public struct ToolMap: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var id: [UInt8]
        public var dsml: [UInt8]
        public init(id: [UInt8], dsml: [UInt8]) { self.id = id; self.dsml = dsml }
        public init(id: String, dsml: String) { self.init(id: Array(id.utf8), dsml: Array(dsml.utf8)) }
    }

    public static let magic: [UInt8] = Array("KTM".utf8)
    public static let version: UInt8 = 1
    static let headerSize = 8
    static let entryHeaderSize = 8
    /// kv_tool_map_load_from_pos stops at an id longer than this (the writer does not enforce it).
    public static let loaderMaxIDBytes = 256

    public var entries: [Entry]
    public init(_ entries: [Entry]) { self.entries = entries }

    public func encoded() -> [UInt8] {
        var b = ToolMap.magic + [ToolMap.version]
        LE.append32(UInt32(entries.count), to: &b)
        for e in entries {
            LE.append32(UInt32(e.id.count), to: &b)
            LE.append32(UInt32(e.dsml.count), to: &b)
            b += e.id
            b += e.dsml
        }
        return b
    }

    /// Decodes a whole trailer held in memory; nil when it does not parse or
    /// does not end exactly at the end of `bytes`.
    public static func decode(_ bytes: [UInt8]) -> ToolMap? {
        bytes.withUnsafeBytes { b in
            entryRanges(b).map { ranges in ToolMap(ranges.map { Entry(id: Array(b[$0.id]), dsml: Array(b[$0.dsml])) }) }
        }
    }

    /// Where each entry's id and DSML lie in a whole trailer held in memory (offsets
    /// into `bytes`); nil when it does not parse or does not end exactly at its end.
    public static func entryRanges(_ b: UnsafeRawBufferPointer) -> [(id: Range<Int>, dsml: Range<Int>)]? {
        var ranges: [(id: Range<Int>, dsml: Range<Int>)] = []
        let failure = walk(length: UInt64(b.count)) { offset, count in
            guard offset + UInt64(count) <= UInt64(b.count) else { return nil }
            return Array(b[Int(offset)..<Int(offset) + count])
        } entry: { id, dsml in
            ranges.append((Int(id.lowerBound)..<Int(id.upperBound), Int(dsml.lowerBound)..<Int(dsml.upperBound)))
        }
        return failure == nil ? ranges : nil
    }

    /// Walks a trailer's structure without holding its payload bytes: `read`
    /// fetches `count` bytes at an offset within the trailer (nil on a short
    /// read). Returns nil when the structure holds, else what is wrong. Never
    /// allocates by a length field, so a damaged count or length costs nothing.
    static func walk(
        length: UInt64,
        read: (UInt64, Int) throws -> [UInt8]?,
        entry: (Range<UInt64>, Range<UInt64>) -> Void = { _, _ in },
        limits: (String) -> Void = { _ in }
    ) rethrows -> String? {
        guard length >= UInt64(headerSize), let head = try read(0, headerSize) else {
            return "tool map trailer is \(length) bytes, shorter than its 8-byte header"
        }
        guard Array(head[0..<3]) == magic else { return "tool map trailer magic is not KTM" }
        guard head[3] == version else { return "tool map trailer version \(head[3]), expected 1" }
        let count = head.withUnsafeBytes { LE.u32($0, 4) }
        // Each entry takes at least 8 bytes: a count that cannot fit is damage, found at once.
        guard UInt64(count) <= (length - UInt64(headerSize)) / UInt64(entryHeaderSize) else {
            return "tool map claims \(count) entries, more than \(length) bytes can hold"
        }
        var offset = UInt64(headerSize)
        for i in 0..<count {
            guard length - offset >= UInt64(entryHeaderSize), let eh = try read(offset, entryHeaderSize) else {
                return "tool map entry \(i) of \(count) starts past the end of the file"
            }
            let idLen = UInt64(eh.withUnsafeBytes { LE.u32($0, 0) })
            let dsmlLen = UInt64(eh.withUnsafeBytes { LE.u32($0, 4) })
            offset += UInt64(entryHeaderSize)
            guard idLen + dsmlLen <= length - offset else {
                return "tool map entry \(i) of \(count) runs \(idLen + dsmlLen - (length - offset)) bytes past the end of the file"
            }
            if idLen == 0 || idLen > UInt64(ToolMap.loaderMaxIDBytes) || dsmlLen == 0 {
                limits("tool map entry \(i) has an id of \(idLen) bytes and DSML of \(dsmlLen): beyond the engine loader's limits (id 1..256, DSML not empty); the loader stops there")
            }
            entry(offset..<offset + idLen, offset + idLen..<offset + idLen + dsmlLen)
            offset += idLen + dsmlLen
        }
        guard offset == length else {
            return "tool map ends at trailer byte \(offset) but the file has \(length - offset) more bytes"
        }
        return nil
    }
}
