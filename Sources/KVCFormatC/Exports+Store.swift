import CKVCAPI
import KVCFormat

@_cdecl("kvc_store_params_init")
public func kvc_store_params_init(_ params: UnsafeMutablePointer<kvc_store_params>?) {
    guard let params else { return }
    params.pointee = kvc_store_params()
    params.pointee.version = 2
    params.pointee.payload_abi = UInt8(KVC_PAYLOAD_ABI_PR146)
}

/// The caller's payload: a buffer, or chunks pulled through its fill callback.
/// Either way the first chunk's DSV4 prefix is checked before it is written,
/// so the library never writes a file its own checker would call corrupt.
private struct CallerPayload: PayloadSource {
    enum Source {
        case buffer(UnsafeRawPointer?)
        case fill(kvc_fill_fn, UnsafeMutableRawPointer?)
    }
    let source: Source
    let byteCount: UInt64
    let header: (tokens: UInt32, ctxSize: UInt32, payloadABI: UInt8)

    func fill(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        switch source {
        case .buffer(let base):
            guard let base else { throw CAPIError.invalid("payload is NULL with payload_len \(byteCount)") }
            buffer.copyMemory(from: UnsafeRawBufferPointer(start: base + Int(offset), count: buffer.count))
        case .fill(let fn, let ctx):
            let rc = fn(ctx, offset, buffer.baseAddress, buffer.count)
            guard rc == 0 else { throw CAPIError(KVC_ERR_CANCELED, "the fill callback returned \(rc) at payload offset \(offset); nothing was stored") }
        }
        if offset == 0 { try checkPrefix(UnsafeRawBufferPointer(buffer)) }
    }

    private func checkPrefix(_ first: UnsafeRawBufferPointer) throws {
        // The generations whose payload opens with the DSV4 prefix; another's payload is its own business.
        guard let version = Generation.knownPayloadVersion(abi: header.payloadABI) else { return }
        // As the checker: a payload shorter than the prefix is not read as one.
        guard byteCount >= UInt64(PayloadPrefix.size), first.count >= PayloadPrefix.size else { return }
        let prefix = PayloadPrefix(decoding: first)
        var defects = prefix.defects(tokens: header.tokens, ctxSize: header.ctxSize, payloadBytes: byteCount)
        if defects.isEmpty && prefix.version != version {
            // Not damage, but a file no engine of that generation restores: a store writes its generation's version.
            defects.append("payload version \(prefix.version), but payload ABI \(header.payloadABI) is the generation that writes payload version \(version)")
        }
        guard defects.isEmpty else {
            throw CAPIError.invalid("refusing to store a payload the checker would call corrupt: " + defects.joined(separator: "; "))
        }
    }
}

private func store(_ cache: OpaquePointer?, _ text: UnsafePointer<UInt8>?, _ textLen: Int,
                   payload source: CallerPayload.Source, _ payloadLen: UInt64,
                   _ tools: UnsafePointer<kvc_tool_entry>?, _ ntools: Int,
                   _ params: UnsafePointer<kvc_store_params>?, _ nameOut: UnsafeMutablePointer<CChar>?) throws {
    let handle = try CacheHandle.from(cache)
    guard let p = params?.pointee else { throw CAPIError.invalid("params is NULL") }
    guard p.version == 1 || p.version == 2 else { throw CAPIError.invalid("version \(p.version): the library writes 1 or 2") }
    guard p.quant_bits == 2 || p.quant_bits == 4 else { throw CAPIError.invalid("quant_bits \(p.quant_bits): expected 2 or 4") }
    guard p.tokens > 0 else { throw CAPIError.invalid("tokens is 0: the checker calls such a file corrupt") }
    guard let reason = KVCReason(rawValue: p.reason) else { throw CAPIError.invalid("reason \(p.reason) is not a KVC_REASON_* value") }
    guard p.key_flags & KVCHeader.extToolMap == 0 else {
        throw CAPIError.invalid("key_flags has KVC_EXT_TOOL_MAP: the library sets it from the tools passed")
    }
    let payload = CallerPayload(source: source, byteCount: payloadLen, header: (p.tokens, p.ctx_size, p.payload_abi))
    let map = try toolMap(tools, ntools)
    var m = CheckpointWriter.Metadata(reason: reason, modelID: p.model_id, quantBits: p.quant_bits, ctxSize: p.ctx_size,
                                      tokens: p.tokens, createdAt: p.created_at,
                                      lastUsed: p.last_used == 0 ? p.created_at : p.last_used)
    m.hits = p.hits
    m.keyFlags = p.key_flags
    m.payloadABI = p.payload_abi
    var writer = CheckpointWriter(version: p.version)
    writer.durable = p.durable != 0
    let path = try writer.store(in: handle.path, text: try bytes(text, textLen, "text"), payload: payload,
                                metadata: m, toolMap: map.entries.isEmpty ? nil : map)
    copyName(String(path.split(separator: "/").last ?? ""), into: nameOut)
}

@_cdecl("kvc_store")
public func kvc_store(_ cache: OpaquePointer?, _ text: UnsafePointer<UInt8>?, _ textLen: Int,
                      _ payload: UnsafeRawPointer?, _ payloadLen: UInt64,
                      _ tools: UnsafePointer<kvc_tool_entry>?, _ ntools: Int,
                      _ params: UnsafePointer<kvc_store_params>?, _ nameOut: UnsafeMutablePointer<CChar>?,
                      _ err: UnsafeMutablePointer<kvc_error>?) -> kvc_status {
    reporting(err) {
        try store(cache, text, textLen, payload: .buffer(payload), payloadLen, tools, ntools, params, nameOut)
    }
}

@_cdecl("kvc_store_stream")
public func kvc_store_stream(_ cache: OpaquePointer?, _ text: UnsafePointer<UInt8>?, _ textLen: Int,
                             _ fill: kvc_fill_fn?, _ fillCtx: UnsafeMutableRawPointer?, _ payloadLen: UInt64,
                             _ tools: UnsafePointer<kvc_tool_entry>?, _ ntools: Int,
                             _ params: UnsafePointer<kvc_store_params>?, _ nameOut: UnsafeMutablePointer<CChar>?,
                             _ err: UnsafeMutablePointer<kvc_error>?) -> kvc_status {
    reporting(err) {
        guard let fill else { throw CAPIError.invalid("fill is NULL") }
        try store(cache, text, textLen, payload: .fill(fill, fillCtx), payloadLen, tools, ntools, params, nameOut)
    }
}
