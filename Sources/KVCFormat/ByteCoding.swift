/// Little-endian field access for the fixed-layout parts of the format.
/// Explicit byte shifts, as ds4_kvstore.c does, so the layout does not depend
/// on the host's byte order or on alignment.
enum LE {
    static func u32(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
        UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
    }

    static func u64(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in (0..<8).reversed() { v = v << 8 | UInt64(b[at + i]) }
        return v
    }

    static func put32(_ v: UInt32, _ b: inout [UInt8], _ at: Int) {
        for i in 0..<4 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }

    static func put64(_ v: UInt64, _ b: inout [UInt8], _ at: Int) {
        for i in 0..<8 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }

    static func append32(_ v: UInt32, to b: inout [UInt8]) {
        for i in 0..<4 { b.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) }
    }
}
