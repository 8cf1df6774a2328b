import Testing
import KVCFormat
import KVCSimulation

@Suite struct CRC32CTests {
    @Test func knownAnswer_123456789_isE3069283() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
    }

    @Test func emptyInput_isZero() {
        #expect(CRC32C.checksum([UInt8]()) == 0)
    }

    @Test func matchesBitwiseDefinition_onRandomInputs() {
        var rng = SplitMix64(seed: 42)
        for len in [1, 2, 3, 7, 8, 15, 16, 31, 64, 255, 1000, 4099] {
            let data = (0..<len).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            #expect(CRC32C.checksum(data) == bitwiseCRC32C(data), "length \(len)")
        }
    }

    @Test func streamedEqualsOneShot_forOddChunkSplits() {
        var rng = SplitMix64(seed: 7)
        let data = (0..<(1 << 20) + 13).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let whole = CRC32C.checksum(data)
        for chunk in [1, 3, 7, 63, 4095, 65_537, 333_333] {
            var c = CRC32C()
            var i = 0
            data.withUnsafeBytes { buf in
                while i < buf.count {
                    let n = min(chunk, buf.count - i)
                    c.update(UnsafeRawBufferPointer(rebasing: buf[i..<i + n]))
                    i += n
                }
            }
            #expect(c.value == whole, "chunk \(chunk)")
        }
        // Uneven, random splits too.
        var c = CRC32C()
        var i = 0
        while i < data.count {
            let n = min(Int(rng.next() % 9000) + 1, data.count - i)
            c.update(data[i..<i + n])
            i += n
        }
        #expect(c.value == whole)
    }
}
