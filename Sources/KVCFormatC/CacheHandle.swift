import CKVCAPI
import KVCFormat

/// What a `kvc_cache *` points to: an open directory, immutable after
/// `kvc_cache_open`, so any number of threads may use one handle at once
/// (`CacheDirectory` is a Sendable final class over a directory descriptor).
final class CacheHandle: Sendable {
    let directory: CacheDirectory

    init(directory: CacheDirectory) { self.directory = directory }

    var path: String { directory.path }

    static func from(_ p: OpaquePointer?) throws -> CacheHandle {
        guard let p else { throw CAPIError.invalid("cache is NULL") }
        return Unmanaged<CacheHandle>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
    }

    /// The path of a checkpoint named by the caller: a plain `<40 hex>.kv` name, nothing else.
    func pathOf(name p: UnsafePointer<CChar>?) throws -> (name: String, path: String) {
        let name = try string(p, "name")
        guard !name.contains("/"), CheckpointName.isCheckpoint(name) else {
            throw CAPIError.invalid("'\(name)' is not a checkpoint name (<40 hex digits>.kv)")
        }
        return (name, directory.pathOf(name))
    }
}

@_cdecl("kvc_cache_open")
public func kvc_cache_open(_ path: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<OpaquePointer?>?,
                           _ err: UnsafeMutablePointer<kvc_error>?) -> kvc_status {
    out?.pointee = nil
    return reporting(err) {
        guard let out else { throw CAPIError.invalid("out is NULL") }
        let dir = try CacheDirectory(path: try string(path, "path"))
        out.pointee = OpaquePointer(Unmanaged.passRetained(CacheHandle(directory: dir)).toOpaque())
    }
}

@_cdecl("kvc_cache_close")
public func kvc_cache_close(_ cache: OpaquePointer?) {
    guard let cache else { return }
    Unmanaged<CacheHandle>.fromOpaque(UnsafeRawPointer(cache)).release()
}
