import Crypto

/// SHA-1 of checkpoint text, the engine's file key. swift-crypto's
/// `Insecure.SHA1` does the hashing; this only streams and spells it in hex.
public struct TextDigest {
    private var sha = Insecure.SHA1()

    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) { sha.update(bufferPointer: bytes) }

    /// The 20 digest bytes.
    public func bytes() -> [UInt8] { Array(sha.finalize()) }

    public func hex() -> String {
        let table = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(40)
        for b in sha.finalize() {
            out.append(table[Int(b >> 4)])
            out.append(table[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func sha1Hex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var d = TextDigest()
        let arr = Array(bytes)
        arr.withUnsafeBytes { d.update($0) }
        return d.hex()
    }
}
