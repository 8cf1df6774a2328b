import CKVCAPI
import KVCFormat

@_cdecl("kvc_touch")
public func kvc_touch(_ cache: OpaquePointer?, _ name: UnsafePointer<CChar>?, _ hits: UInt64, _ now: UInt64,
                      _ headerOut: UnsafeMutablePointer<kvc_header>?, _ err: UnsafeMutablePointer<kvc_error>?) -> kvc_status {
    reporting(err) {
        let handle = try CacheHandle.from(cache)
        let (_, path) = try handle.pathOf(name: name)
        let newHits: UInt32?
        if hits == UInt64.max { newHits = nil } else {
            guard let h = UInt32(exactly: hits) else { throw CAPIError.invalid("hits \(hits) does not fit the u32 field") }
            newHits = h
        }
        let h = try CheckpointUpdater().touch(path: path, hits: newHits, now: now)
        headerOut?.pointee = kvc_header(h)
    }
}

@_cdecl("kvc_rewrite_tool_map")
public func kvc_rewrite_tool_map(_ cache: OpaquePointer?, _ name: UnsafePointer<CChar>?,
                                 _ tools: UnsafePointer<kvc_tool_entry>?, _ ntools: Int, _ now: UInt64,
                                 _ headerOut: UnsafeMutablePointer<kvc_header>?, _ err: UnsafeMutablePointer<kvc_error>?) -> kvc_status {
    reporting(err) {
        let handle = try CacheHandle.from(cache)
        let (_, path) = try handle.pathOf(name: name)
        let h = try CheckpointUpdater().rewriteToolMap(path: path, toolMap: try toolMap(tools, ntools), now: now)
        headerOut?.pointee = kvc_header(h)
    }
}
