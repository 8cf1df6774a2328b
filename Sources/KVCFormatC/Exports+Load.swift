import CKVCAPI
import KVCFormat

/// Declined before any payload byte was read: the caller's buffer is too small.
private struct BufferTooSmall: Error {
    var header: KVCHeader
    var trailerBytes: UInt64
}

extension kvc_checkpoint {
    /// What the index knows of a checkpoint (header and size; the body unread, so not CRC-verified).
    init(_ e: CacheEntry) {
        self.init()
        copyName(e.fileName, into: &name)
        if let h = e.header { header = kvc_header(h) }
        file_size = e.fileSize
        if let h = e.header, h.hasToolMap, let end = h.bodyEnd, e.fileSize >= end { tool_map_bytes = Int(e.fileSize - end) }
    }
}

private func compatibility(_ c: UnsafePointer<kvc_compat>?) throws -> CheckpointLoader.Compatibility {
    guard let c = c?.pointee else { throw CAPIError.invalid("compat is NULL") }
    return CheckpointLoader.Compatibility(modelID: c.model_id, quantBits: c.quant_bits, ctxSize: c.ctx_size,
                                          rejectDifferentQuant: c.reject_different_quant != 0,
                                          engine: try engineGeneration(c.payload_abi))
}

private func prompt(_ p: UnsafePointer<UInt8>?, _ len: Int) throws -> [UInt8] { try bytes(p, len, "prompt") }

private func find(_ handle: CacheHandle, _ prompt: [UInt8], _ compat: CheckpointLoader.Compatibility) throws -> CacheEntry {
    guard let e = try CheckpointLoader().findTextPrefix(in: handle.path, prompt: prompt, compatibility: compat) else {
        throw CAPIError(KVC_ERR_NOT_FOUND, "\(handle.path): no stored checkpoint is a prefix of the \(prompt.count)-byte prompt")
    }
    return e
}

private func load(name: String, path: String, engine: Generation,
                  _ target: UnsafePointer<kvc_load_target>?, _ out: UnsafeMutablePointer<kvc_checkpoint>?) throws {
    guard let t = target?.pointee else { throw CAPIError.invalid("target is NULL") }
    guard (t.payload != nil) != (t.read_fn != nil) else {
        throw CAPIError.invalid("target must set exactly one of payload and read_fn")
    }
    out?.pointee = kvc_checkpoint()
    var loader = CheckpointLoader()
    loader.verifierOptions.engine = engine
    let body: CheckpointLoader.LoadedBody
    do {
        body = try loader.load(path: path) { h, trailer in
            guard t.tool_map == nil || UInt64(t.tool_map_cap) >= trailer else { throw BufferTooSmall(header: h, trailerBytes: trailer) }
            if let buffer = t.payload {
                guard t.payload_cap >= h.payloadBytes else { throw BufferTooSmall(header: h, trailerBytes: trailer) }
                return .buffer(UnsafeMutableRawBufferPointer(start: buffer, count: Int(h.payloadBytes)))
            }
            let fn = t.read_fn!
            return .sink { chunk in
                let rc = fn(t.read_ctx, chunk.baseAddress, chunk.count)
                if rc != 0 {
                    throw CAPIError(KVC_ERR_CANCELED, "\(path): the read callback returned \(rc); the load was abandoned")
                }
            }
        }
    } catch let e as BufferTooSmall {
        if let out {
            copyName(name, into: &out.pointee.name)
            out.pointee.header = kvc_header(e.header)
            out.pointee.tool_map_bytes = Int(e.trailerBytes)
        }
        throw CAPIError(KVC_ERR_BUFFER, "\(path): needs a payload buffer of \(e.header.payloadBytes) bytes"
                        + (t.tool_map == nil ? "" : " and a tool-map buffer of \(e.trailerBytes)")
                        + "; given \(t.payload == nil ? "a read callback" : "\(t.payload_cap)")"
                        + (t.tool_map == nil ? "" : " and \(t.tool_map_cap)"))
    }
    let trailer = body.toolMapBytes ?? []
    if let dest = t.tool_map, !trailer.isEmpty {
        guard trailer.count <= t.tool_map_cap else {
            throw CAPIError(KVC_ERR_BUFFER, "\(path): the tool map grew to \(trailer.count) bytes while it was loaded; tool_map_cap is \(t.tool_map_cap)")
        }
        UnsafeMutableRawBufferPointer(start: dest, count: trailer.count).copyBytes(from: trailer)
    }
    if let out {
        copyName(name, into: &out.pointee.name)
        out.pointee.header = kvc_header(body.header)
        out.pointee.file_size = body.fileSize
        out.pointee.tool_map_bytes = trailer.count
        out.pointee.crc_verified = body.checksums == .crc32c ? 1 : 0
    }
}

@_cdecl("kvc_find_prefix")
public func kvc_find_prefix(_ cache: OpaquePointer?, _ promptBytes: UnsafePointer<UInt8>?, _ promptLen: Int,
                            _ compat: UnsafePointer<kvc_compat>?, _ found: UnsafeMutablePointer<kvc_checkpoint>?,
                            _ err: UnsafeMutablePointer<kvc_error>?) -> kvc_status {
    reporting(err) {
        let handle = try CacheHandle.from(cache)
        guard let found else { throw CAPIError.invalid("found is NULL") }
        let e = try find(handle, try prompt(promptBytes, promptLen), try compatibility(compat))
        found.pointee = kvc_checkpoint(e)
    }
}

@_cdecl("kvc_load")
public func kvc_load(_ cache: OpaquePointer?, _ name: UnsafePointer<CChar>?, _ expectedABI: Int32,
                     _ target: UnsafePointer<kvc_load_target>?, _ out: UnsafeMutablePointer<kvc_checkpoint>?,
                     _ err: UnsafeMutablePointer<kvc_error>?) -> kvc_status {
    reporting(err) {
        let handle = try CacheHandle.from(cache)
        let (n, path) = try handle.pathOf(name: name)
        try load(name: n, path: path, engine: try engineGeneration(expectedABI), target, out)
    }
}

@_cdecl("kvc_load_prefix")
public func kvc_load_prefix(_ cache: OpaquePointer?, _ promptBytes: UnsafePointer<UInt8>?, _ promptLen: Int,
                            _ compat: UnsafePointer<kvc_compat>?, _ target: UnsafePointer<kvc_load_target>?,
                            _ out: UnsafeMutablePointer<kvc_checkpoint>?, _ err: UnsafeMutablePointer<kvc_error>?) -> kvc_status {
    reporting(err) {
        let handle = try CacheHandle.from(cache)
        let c = try compatibility(compat)
        let e = try find(handle, try prompt(promptBytes, promptLen), c)
        try load(name: e.fileName, path: handle.directory.pathOf(e.fileName), engine: c.engine ?? (try engineGeneration(-1)), target, out)
    }
}

@_cdecl("kvc_tool_map_decode")
public func kvc_tool_map_decode(_ buf: UnsafePointer<UInt8>?, _ len: Int, _ entries: UnsafeMutablePointer<kvc_tool_entry>?,
                                _ cap: Int, _ count: UnsafeMutablePointer<Int>?,
                                _ err: UnsafeMutablePointer<kvc_error>?) -> kvc_status {
    reporting(err) {
        count?.pointee = 0
        guard buf != nil || len == 0 else { throw CAPIError.invalid("buf is NULL with length \(len)") }
        // Entries point into the caller's buffer, where ToolMap's own walk found them.
        guard let ranges = ToolMap.entryRanges(UnsafeRawBufferPointer(start: buf, count: len)) else {
            throw CAPIError(KVC_ERR_CORRUPT, "the \(len)-byte buffer is not a KTM tool map")
        }
        count?.pointee = ranges.count
        guard ranges.count <= cap else { throw CAPIError(KVC_ERR_BUFFER, "the tool map has \(ranges.count) entries; cap is \(cap)") }
        guard ranges.isEmpty || entries != nil else { throw CAPIError.invalid("entries is NULL") }
        for (i, r) in ranges.enumerated() {
            entries![i] = kvc_tool_entry(id: buf! + r.id.lowerBound, id_len: r.id.count, dsml: buf! + r.dsml.lowerBound, dsml_len: r.dsml.count)
        }
    }
}

@_cdecl("kvc_stat")
public func kvc_stat(_ cache: OpaquePointer?, _ name: UnsafePointer<CChar>?, _ expectedABI: Int32,
                     _ out: UnsafeMutablePointer<kvc_checkpoint>?, _ err: UnsafeMutablePointer<kvc_error>?) -> kvc_status {
    reporting(err) {
        let handle = try CacheHandle.from(cache)
        let (n, path) = try handle.pathOf(name: name)
        guard let out else { throw CAPIError.invalid("out is NULL") }
        out.pointee = kvc_checkpoint()
        guard let e = try handle.directory.entry(named: n, engine: try engineGeneration(expectedABI)) else {
            throw CAPIError(KVC_ERR_NOT_CHECKPOINT, "\(path): not a regular file")
        }
        guard let h = e.header else { throw CAPIError(KVC_ERR_NOT_CHECKPOINT, "\(path): \(e.defect ?? "no KVC header")") }
        if h.isV2 && h.computedHeaderCRC != h.headerCRC {
            throw CAPIError(KVC_ERR_CORRUPT, "\(path): header CRC mismatch (expected \(hex32(h.headerCRC)), actual \(hex32(h.computedHeaderCRC)))")
        }
        if let defect = e.defect { throw CAPIError(KVC_ERR_CORRUPT, "\(path): \(defect)") }
        if let why = e.unusable { throw CAPIError(KVC_ERR_INCOMPATIBLE, "\(path): \(why)") }
        out.pointee = kvc_checkpoint(e)
    }
}
