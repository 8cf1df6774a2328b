import CISAL

/// Streaming CRC32C (Castagnoli, as iSCSI and kvc-format.md define it) over ISA-L.
///
/// ISA-L's `crc32_iscsi` neither pre- nor post-inverts and takes an `int`
/// length, so this type owns the inversion and feeds ISA-L in chunks under
/// 1 GiB; callers stream a file through `update` without ever holding it whole.
public struct CRC32C: Sendable, Equatable {
    private var state: UInt32 = 0xFFFF_FFFF

    public init() {}

    /// Continues a CRC already finished as `value` (zlib's `crc32(crc, ...)` convention).
    public init(continuing value: UInt32) { state = value ^ 0xFFFF_FFFF }

    /// Largest slice handed to ISA-L in one call (its length parameter is a C `int`).
    static let maxSlice = 1 << 30

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard var base = bytes.baseAddress else { return }
        var remaining = bytes.count
        while remaining > 0 {
            let n = min(remaining, CRC32C.maxSlice)
            state = crc32_iscsi(
                UnsafeMutablePointer(mutating: base.assumingMemoryBound(to: UInt8.self)),
                Int32(n), state)
            base += n
            remaining -= n
        }
    }

    public mutating func update<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        let done: Void? = bytes.withContiguousStorageIfAvailable { update(UnsafeRawBufferPointer($0)) }
        if done == nil {
            let copy = Array(bytes)
            copy.withUnsafeBytes { update($0) }
        }
    }

    /// The CRC of everything fed so far; feeding may continue afterwards.
    public var value: UInt32 { state ^ 0xFFFF_FFFF }

    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c = CRC32C()
        c.update(bytes)
        return c.value
    }

    public static func checksum<Bytes: Sequence>(_ bytes: Bytes) -> UInt32 where Bytes.Element == UInt8 {
        var c = CRC32C()
        c.update(bytes)
        return c.value
    }
}
