import CKVCAPI
import KVCFormat

private func incoming(_ p: UnsafePointer<kvc_incoming>?) throws -> IncomingCheckpoint? {
    guard let c = p?.pointee else { return nil }
    return IncomingCheckpoint(text: try bytes(c.text, c.text_len, "incoming->text"), modelID: c.model_id,
                              quantBits: c.quant_bits, ctxSize: c.ctx_size, rejectDifferentQuant: c.reject_different_quant != 0)
}

@_cdecl("kvc_eviction_score")
public func kvc_eviction_score(_ header: UnsafePointer<kvc_header>?, _ sha: UnsafePointer<CChar>?, _ fileSize: UInt64,
                               _ now: UInt64, _ incomingPointer: UnsafePointer<kvc_incoming>?) -> Double {
    guard let header else { return 0 }
    let shaText = sha.map { String(cString: $0) } ?? ""
    let entry = CacheEntry(sha: shaText, header: KVCHeader(header.pointee), fileSize: fileSize,
                           identity: FileIdentity(device: 0, inode: 0), unusable: nil)
    // No sha means no supersede test: an entry without a name cannot be matched to the incoming text.
    let inc = shaText.isEmpty ? nil : (try? incoming(incomingPointer)) ?? nil
    return EvictionScore.score(entry, now: now, incoming: inc)
}

@_cdecl("kvc_plan_eviction")
public func kvc_plan_eviction(_ cache: OpaquePointer?, _ budget: UInt64, _ extra: UInt64, _ now: UInt64,
                              _ incomingPointer: UnsafePointer<kvc_incoming>?, _ expectedABI: Int32,
                              _ victims: UnsafeMutablePointer<kvc_victim>?, _ cap: Int,
                              _ planOut: UnsafeMutablePointer<kvc_plan>?, _ err: UnsafeMutablePointer<kvc_error>?) -> kvc_status {
    reporting(err) {
        let handle = try CacheHandle.from(cache)
        guard let planOut else { throw CAPIError.invalid("plan is NULL") }
        let engine = try engineGeneration(expectedABI)
        // The engine knows its own generation (or, upstream, reads no byte 20): judge by that, not by a guess from the files.
        let entries = try handle.directory.scan().entries.map { $0.judged(engine: engine) }
        let plan = EvictionPlan.make(entries: entries, budgetBytes: budget, extraBytes: extra, now: now,
                                     incoming: try incoming(incomingPointer))
        planOut.pointee = kvc_plan(total_bytes: plan.totalBytes, target_bytes: plan.targetBytes,
                                   remaining_bytes: plan.remainingBytes, victim_count: plan.victims.count)
        if plan.victims.count > cap {
            throw CAPIError(KVC_ERR_BUFFER, "\(plan.victims.count) victims; victim_cap is \(cap)")
        }
        guard plan.victims.isEmpty || victims != nil else { throw CAPIError.invalid("victims is NULL") }
        for (i, v) in plan.victims.enumerated() {
            var out = kvc_victim()
            copyName(v.entry.fileName, into: &out.name)
            out.file_size = v.entry.fileSize
            out.score = v.score
            victims![i] = out
        }
    }
}
