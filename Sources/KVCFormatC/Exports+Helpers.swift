import CKVCAPI
import KVCFormat

/// The library's version; kept equal to debian/changelog's by scripts/build-libkvcformat.
let libraryVersion: StaticString = "0.1.0"

@_cdecl("kvc_api_version")
public func kvc_api_version() -> Int32 { Int32(KVC_API_VERSION) }

@_cdecl("kvc_version")
public func kvc_version() -> UnsafePointer<CChar> {
    UnsafeRawPointer(libraryVersion.utf8Start).assumingMemoryBound(to: CChar.self)
}

@_cdecl("kvc_status_name")
public func kvc_status_name(_ status: kvc_status) -> UnsafePointer<CChar> {
    let name: StaticString = switch status {
    case KVC_OK: "ok"
    case KVC_ERR_IO: "i/o error"
    case KVC_ERR_NOT_CHECKPOINT: "not a checkpoint"
    case KVC_ERR_CORRUPT: "corrupt"
    case KVC_ERR_INCOMPATIBLE: "incompatible"
    case KVC_ERR_INVALID: "invalid argument"
    case KVC_ERR_NOT_FOUND: "not found"
    case KVC_ERR_BUFFER: "buffer too small"
    case KVC_ERR_CANCELED: "canceled"
    default: "unknown status"
    }
    return UnsafeRawPointer(name.utf8Start).assumingMemoryBound(to: CChar.self)
}

@_cdecl("kvc_crc32c")
public func kvc_crc32c(_ crc: UInt32, _ buf: UnsafeRawPointer?, _ len: Int) -> UInt32 {
    guard let buf, len > 0 else { return crc }
    var c = CRC32C(continuing: crc)
    c.update(UnsafeRawBufferPointer(start: buf, count: len))
    return c.value
}

@_cdecl("kvc_sha1")
public func kvc_sha1(_ buf: UnsafeRawPointer?, _ len: Int, _ digest: UnsafeMutablePointer<UInt8>?) {
    guard let digest else { return }
    let out = sha1(of: buf, len).bytes()
    for i in 0..<out.count { digest[i] = out[i] }
}

@_cdecl("kvc_checkpoint_name")
public func kvc_checkpoint_name(_ text: UnsafePointer<UInt8>?, _ len: Int, _ name: UnsafeMutablePointer<CChar>?) {
    copyName(CheckpointName.fileName(sha: sha1(of: text, len).hex()), into: name)
}

/// The SHA-1 of a caller's bytes (NULL or a length of 0: of nothing).
private func sha1(of p: UnsafeRawPointer?, _ len: Int) -> TextDigest {
    var d = TextDigest()
    d.update(UnsafeRawBufferPointer(start: len > 0 ? p : nil, count: p == nil ? 0 : len))
    return d
}
