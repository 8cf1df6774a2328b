import CKVCAPI
import KVCFormat

/// How a failure crosses the C boundary: every export runs its body through
/// `reporting`, which turns the typed Swift error into a `kvc_status` and, when
/// the caller passed a `kvc_error`, the errno and the message. Nothing Swift
/// (no error, no class, no string) leaves the library otherwise.
struct CAPIError: Error {
    var status: kvc_status
    var sysErrno: Int32 = 0
    var message: String

    init(_ status: kvc_status, _ message: String, errno: Int32 = 0) {
        self.status = status
        self.message = message
        self.sysErrno = errno
    }

    init(_ e: KVCError) {
        let status: kvc_status = switch e.kind {
        case .io: KVC_ERR_IO
        case .notACheckpoint: KVC_ERR_NOT_CHECKPOINT
        case .corrupt: KVC_ERR_CORRUPT
        case .incompatible: KVC_ERR_INCOMPATIBLE
        case .invalidArgument: KVC_ERR_INVALID
        default: KVC_ERR_IO
        }
        self.init(status, e.description, errno: e.errno?.rawValue ?? 0)
    }

    static func invalid(_ message: String) -> CAPIError { CAPIError(KVC_ERR_INVALID, message) }
}

/// Runs one export: its return value on success, else the failure's status with `err` filled.
func reporting(_ err: UnsafeMutablePointer<kvc_error>?, _ body: () throws -> Void) -> kvc_status {
    do {
        try body()
        return KVC_OK
    } catch let e as CAPIError {
        fill(err, e)
        return e.status
    } catch let e as KVCError {
        let c = CAPIError(e)
        fill(err, c)
        return c.status
    } catch {
        let c = CAPIError(KVC_ERR_IO, "\(error)")
        fill(err, c)
        return c.status
    }
}

private func fill(_ err: UnsafeMutablePointer<kvc_error>?, _ e: CAPIError) {
    guard let err else { return }
    err.pointee.status = e.status
    err.pointee.sys_errno = e.sysErrno
    withUnsafeMutableBytes(of: &err.pointee.message) { copyCString(e.message, into: $0) }
}

/// Copies `s` into a fixed C char array, NUL-terminated, cut at a UTF-8 character boundary.
func copyCString(_ s: String, into dest: UnsafeMutableRawBufferPointer) {
    guard dest.count > 0 else { return }
    var bytes = Array(s.utf8.prefix(dest.count - 1))
    if bytes.count == dest.count - 1 {
        while let last = bytes.last, last & 0xC0 == 0x80 { bytes.removeLast() }  // continuation bytes of a cut character
        if let last = bytes.last, last >= 0xC0 { bytes.removeLast() }            // its lead byte
    }
    dest.copyBytes(from: bytes)
    dest[bytes.count] = 0
}

/// A C string argument, or an invalid-argument failure naming it.
func string(_ p: UnsafePointer<CChar>?, _ what: String) throws -> String {
    guard let p else { throw CAPIError.invalid("\(what) is NULL") }
    return String(cString: p)
}

/// Bytes the caller passed as pointer and length (NULL allowed only for length 0).
func bytes(_ p: UnsafeRawPointer?, _ count: Int, _ what: String) throws -> [UInt8] {
    guard count > 0 else { return [] }
    guard let p else { throw CAPIError.invalid("\(what) is NULL with length \(count)") }
    return Array(UnsafeRawBufferPointer(start: p, count: count))
}

/// The engine ABI argument: -1 for any, else 0...255.
func engineABI(_ value: Int32) throws -> UInt8? {
    if value < 0 { return nil }
    guard let abi = UInt8(exactly: value) else { throw CAPIError.invalid("expected_abi \(value) is not -1 or 0...255") }
    return abi
}

/// The generation an engine calling with `expected_abi` is: that ABI with the payload version its
/// generation writes (2 for ABI 2, 1 for ABI 0; `Generation.knownPayloadVersion`). -1 (any) is an
/// engine that reads no byte 20 and no payload version, as ds4 before e8e8779 read byte 20. The
/// library reads both file versions, so an engine on it does too.
func engineGeneration(_ value: Int32) throws -> Generation {
    let abi = try engineABI(value)
    return Generation(fileVersion: 2, payloadABI: abi ?? KVCHeader.pr146PayloadABI,
                      payloadVersion: abi.flatMap(Generation.knownPayloadVersion(abi:)))
}
