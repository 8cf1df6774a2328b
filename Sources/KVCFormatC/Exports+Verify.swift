import CKVCAPI
import KVCFormat

extension kvc_problem {
    init(_ p: Problem) {
        self.init()
        region = switch p.region {
        case .header: Int32(KVC_REGION_HEADER)
        case .text: Int32(KVC_REGION_TEXT)
        case .payload: Int32(KVC_REGION_PAYLOAD)
        case .trailer: Int32(KVC_REGION_TRAILER)
        case .name: Int32(KVC_REGION_NAME)
        case .size: Int32(KVC_REGION_SIZE)
        }
        severity = switch p.severity {
        case .corrupt: Int32(KVC_SEVERITY_CORRUPT)
        case .incompatible: Int32(KVC_SEVERITY_INCOMPATIBLE)
        case .warning: Int32(KVC_SEVERITY_WARNING)
        }
        if let e = p.expectedCRC, let a = p.actualCRC {
            has_crc = 1
            expected_crc = e
            actual_crc = a
        }
        withUnsafeMutableBytes(of: &detail) { copyCString(p.detail, into: $0) }
    }
}

@_cdecl("kvc_verify")
public func kvc_verify(_ cache: OpaquePointer?, _ nameOrPath: UnsafePointer<CChar>?, _ expectedABI: Int32,
                       _ out: UnsafeMutablePointer<kvc_verify_result>?, _ err: UnsafeMutablePointer<kvc_error>?) -> kvc_status {
    reporting(err) {
        guard let out else { throw CAPIError.invalid("out is NULL") }
        // -1 (auto): the generation is learned from the file itself, exactly as `kvscrubd verify FILE` does.
        func verifier(_ entry: () throws -> CacheEntry?) throws -> Verifier {
            guard expectedABI < 0 else { return Verifier(engine: try engineGeneration(expectedABI)) }
            let e = (try? entry()) ?? nil
            return Verifier(engine: e.flatMap { GenerationSetting.auto.resolve(entries: [$0]).generation })
        }
        let report: VerifyReport
        if cache == nil {
            let path = try string(nameOrPath, "path")
            report = try verifier { try CacheEntry.read(path: path) }.verify(path: path)
        } else {
            let handle = try CacheHandle.from(cache)
            let name = try string(nameOrPath, "name")
            guard !name.contains("/") else { throw CAPIError.invalid("'\(name)' is a path; with a cache, pass a name") }
            report = try handle.directory.verify(name: name, with: try verifier { try handle.directory.entry(named: name, engine: nil) })
        }
        out.pointee = kvc_verify_result()
        out.pointee.verdict = switch report.verdict {
        case .ok: Int32(KVC_VERDICT_OK)
        case .corrupt: Int32(KVC_VERDICT_CORRUPT)
        case .incompatible: Int32(KVC_VERDICT_INCOMPATIBLE)
        case .ignored: Int32(KVC_VERDICT_IGNORED)
        }
        out.pointee.crc_verified = report.checksums == .crc32c ? 1 : 0
        if let h = report.header {
            out.pointee.has_header = 1
            out.pointee.header = kvc_header(h)
        }
        out.pointee.file_size = report.fileSize
        out.pointee.problem_count = report.problems.count
        withUnsafeMutableBytes(of: &out.pointee.problems) { raw in
            let slots = raw.bindMemory(to: kvc_problem.self)
            for (i, p) in report.problems.prefix(slots.count).enumerated() { slots[i] = kvc_problem(p) }
        }
    }
}
