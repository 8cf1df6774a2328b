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

extension CRC32C {
    /// The CRC32C of A followed by B, from the CRC of A, the CRC of B and B's
    /// length: what lets two threads checksum alternate pieces of one payload
    /// (`StripedRead`). The CRC is linear over GF(2): appending `n` bytes moves
    /// A's CRC through `n` zero bytes (a 32×32 bit matrix, `ZerosOperator`) and
    /// XORs in B's; the initial and final inversions cancel, as in zlib's
    /// `crc32_combine`.
    public static func combine(_ a: UInt32, _ b: UInt32, lengthOfB n: Int) -> UInt32 {
        ZerosOperator(bytes: n).apply(a) ^ b
    }

    /// Appending `bytes` zero bytes to a message, as a linear map on its CRC.
    public struct ZerosOperator: Sendable {
        /// Column i: the image of bit i.
        private var columns: [UInt32]

        public init(bytes: Int) {
            precondition(bytes >= 0)
            // One zero bit: shift right, folding the polynomial in when bit 0 leaves (reflected CRC32C).
            var op = [UInt32](repeating: 0, count: 32)
            op[0] = 0x82F6_3B78
            for i in 1..<32 { op[i] = 1 << (i - 1) }
            var result = ZerosOperator(identity: ())
            // Square up to one byte (8 bits), then apply by the bits of `bytes`.
            var power = ZerosOperator(columns: op)
            for _ in 0..<3 { power = power.then(power) }
            var n = bytes
            while n > 0 {
                if n & 1 == 1 { result = result.then(power) }
                power = power.then(power)
                n >>= 1
            }
            self = result
        }

        private init(columns: [UInt32]) { self.columns = columns }
        private init(identity: Void) { columns = (0..<32).map { UInt32(1) << $0 } }

        public func apply(_ v: UInt32) -> UInt32 {
            var out: UInt32 = 0
            var v = v
            var i = 0
            while v != 0 {
                if v & 1 != 0 { out ^= columns[i] }
                v >>= 1
                i += 1
            }
            return out
        }

        /// This map followed by `next`.
        func then(_ next: ZerosOperator) -> ZerosOperator {
            ZerosOperator(columns: columns.map { next.apply($0) })
        }
    }
}
