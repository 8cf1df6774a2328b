import SystemPackage

/// An error from the format module, carrying the file and the system error
/// that caused it, so a log line can name both without the caller re-deriving them.
///
/// A struct over an open `Kind` (as swift-service-lifecycle does) so that new
/// kinds do not break callers that switch on the common ones.
public struct KVCError: Error, CustomStringConvertible, Sendable, Equatable {
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        /// A system call failed; `errno` says why.
        public static let io = Kind("io")
        /// The file is not a checkpoint the operation can act on (bad header, wrong version...).
        public static let notACheckpoint = Kind("not a checkpoint")
        /// The bytes prove damage; the operation refused to go on.
        public static let corrupt = Kind("corrupt")
        /// Well formed, but written for another engine generation.
        public static let incompatible = Kind("incompatible")
        /// The caller asked for something the format cannot express.
        public static let invalidArgument = Kind("invalid argument")
        public var description: String { name }
    }

    public let kind: Kind
    public let path: String?
    public let errno: Errno?
    public let detail: String

    public init(_ kind: Kind, path: String? = nil, errno: Errno? = nil, _ detail: String) {
        self.kind = kind
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        var s = ""
        if let path { s += "\(path): " }
        s += detail
        if let errno { s += ": \(errno.description)" }
        return s
    }

    static func io(_ errno: Errno, path: String, _ what: String) -> KVCError {
        KVCError(.io, path: path, errno: errno, what)
    }
}
