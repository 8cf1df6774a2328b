/// Where a store gets its payload bytes: pulled in chunks so a multi-GiB
/// payload never has to exist in memory at once (the engine serializes its
/// session state the same way).
public protocol PayloadSource {
    var byteCount: UInt64 { get }
    /// Fills `buffer` with the payload bytes starting at `offset`. Throwing
    /// abandons the store: the temporary file is removed, nothing is renamed.
    func fill(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
}

/// A payload already in memory.
public struct BytesPayload: PayloadSource {
    public let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public var byteCount: UInt64 { UInt64(bytes.count) }
    public func fill(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) {
        bytes.withUnsafeBytes { src in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[Int(offset)..<Int(offset) + buffer.count]))
        }
    }
}
