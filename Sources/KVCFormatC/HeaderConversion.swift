import CKVCAPI
import KVCFormat

extension kvc_header {
    init(_ h: KVCHeader) {
        self.init()
        version = h.version
        quant_bits = h.quantBits
        reason = h.reasonCode
        ext_flags = h.extFlags
        model_id = h.modelID
        payload_abi = h.payloadABI
        tokens = h.tokens
        hits = h.hits
        ctx_size = h.ctxSize
        text_bytes = h.textBytes
        created_at = h.createdAt
        last_used = h.lastUsed
        payload_bytes = h.payloadBytes
        header_crc = h.headerCRC
        text_crc = h.textCRC
        payload_crc = h.payloadCRC
        trailer_crc = h.trailerCRC
    }
}

extension KVCHeader {
    init(_ c: kvc_header) {
        self.init(version: c.version, quantBits: c.quant_bits, reason: KVCReason(code: c.reason), extFlags: c.ext_flags,
                  modelID: c.model_id, tokens: c.tokens, hits: c.hits, ctxSize: c.ctx_size, payloadABI: c.payload_abi,
                  createdAt: c.created_at, lastUsed: c.last_used, payloadBytes: c.payload_bytes, textBytes: c.text_bytes)
        reasonCode = c.reason
        headerCRC = c.header_crc
        textCRC = c.text_crc
        payloadCRC = c.payload_crc
        trailerCRC = c.trailer_crc
    }
}

/// A tool map the caller passed as an array of `kvc_tool_entry` (NULL allowed for 0 entries).
func toolMap(_ tools: UnsafePointer<kvc_tool_entry>?, _ count: Int) throws -> ToolMap {
    guard count > 0 else { return ToolMap([]) }
    guard let tools else { throw CAPIError.invalid("tools is NULL with ntools \(count)") }
    var entries: [ToolMap.Entry] = []
    entries.reserveCapacity(count)
    for i in 0..<count {
        let t = tools[i]
        entries.append(ToolMap.Entry(id: try bytes(t.id, t.id_len, "tools[\(i)].id"),
                                     dsml: try bytes(t.dsml, t.dsml_len, "tools[\(i)].dsml")))
    }
    return ToolMap(entries)
}

/// Writes a checkpoint file name into a caller's `char[KVC_NAME_SIZE]`.
func copyName(_ name: String, into p: UnsafeMutablePointer<CChar>?) {
    guard let p else { return }
    copyCString(name, into: UnsafeMutableRawBufferPointer(start: p, count: Int(KVC_NAME_SIZE)))
}

func copyName<T>(_ name: String, into field: inout T) {
    withUnsafeMutableBytes(of: &field) { copyCString(name, into: $0) }
}
