/// Loads checkpoints for the engine: finds the longest stored text prefix of
/// a prompt and reads it back, verified.
///
/// Verification happens while the bytes arrive: the payload is read straight
/// into the caller's buffer and each chunk is CRC'd while still in cache, so
/// a verified load costs little more than the read itself. Nothing is handed
/// over until every check passed: a corrupt v2 file is refused whole. A v1
/// file has no CRC and loads after the structural checks, as the engine does.
public struct CheckpointLoader: Sendable {
    public struct Loaded: Sendable {
        public var path: String
        public var header: KVCHeader
        public var text: [UInt8]
        public var payload: [UInt8]
        public var toolMap: ToolMap?
        /// The verifier's report; nil for an unverified load.
        public var checksums: Checksums
        public var warnings: [Problem]
    }

    /// Pieces of 4 MiB: a load goes straight into the caller's buffer, and large payloads are
    /// read by two threads in alternate pieces (`StripedRead`); fewer, larger pieces cost
    /// fewer system calls and CRC combinations.
    public var verifierOptions: Verifier.Options = {
        var o = Verifier.Options()
        o.chunkSize = 4 << 20
        return o
    }()
    /// Checkpoints larger than this are refused rather than allocated (a damaged length must not cost RAM).
    public var maxPayloadBytes: UInt64 = 1 << 40

    public init() {}

    /// Where a load puts the payload: a buffer at least `payloadBytes` long,
    /// or a sink that gets each chunk, in order, after it was CRC'd.
    public enum PayloadDestination {
        case buffer(UnsafeMutableRawBufferPointer)
        case sink((UnsafeRawBufferPointer) throws -> Void)
    }

    /// What a load through a `PayloadDestination` returns: everything but the payload.
    public struct LoadedBody: Sendable {
        public var header: KVCHeader
        public var fileSize: UInt64
        public var text: [UInt8]
        /// The tool-map trailer as stored (v2: its CRC checked again on these very bytes); nil without one.
        public var toolMapBytes: [UInt8]?
        public var checksums: Checksums
        public var warnings: [Problem]
    }

    /// Reads the checkpoint at `path`. With `verify`, throws `.corrupt` (with
    /// every problem in the message) or `.incompatible` instead of returning damaged bytes.
    public func load(path: String, verify: Bool = true) throws -> Loaded {
        // No lock, as the engine: a touch or trailer rewrite caught half done reads as damage, as it would for ds4.
        let file = try CheckpointFile.open(path, .readOnly)
        let (h, size) = try header(of: file, verify: verify)
        var payload = [UInt8](repeating: 0, count: Int(h.payloadBytes))
        let body = try payload.withUnsafeMutableBytes {
            try self.body(of: file, header: h, size: size, verify: verify, into: .buffer($0))
        }
        return Loaded(path: path, header: h, text: body.text, payload: payload,
                      toolMap: body.toolMapBytes.flatMap(ToolMap.decode),
                      checksums: body.checksums, warnings: body.warnings)
    }

    /// Reads the checkpoint at `path` into the caller's destination. `destination`
    /// is asked once the header is known (with the trailer's length), before any
    /// payload byte is read, and may throw to decline (a buffer too small).
    /// With `verify`, nothing returns unless every check passed; a sink's chunks
    /// are only good once this returns.
    public func load(path: String, verify: Bool = true,
                     destination: (_ header: KVCHeader, _ trailerBytes: UInt64) throws -> PayloadDestination) throws -> LoadedBody {
        let file = try CheckpointFile.open(path, .readOnly)
        let (h, size) = try header(of: file, verify: verify)
        let trailer = h.hasToolMap ? size - (h.bodyEnd ?? size) : 0
        return try body(of: file, header: h, size: size, verify: verify, into: destination(h, trailer))
    }

    /// The header, once it is known to describe a file as long as it says; refused otherwise.
    private func header(of file: borrowing CheckpointFile, verify: Bool) throws -> (KVCHeader, UInt64) {
        let name = String(file.path.split(separator: "/").last ?? "")
        let size = try file.size
        let head = try file.read(at: 0, count: KVCHeader.v2PrologueSize)
        guard case .header(let h) = KVCHeader.probe(head) else {
            if verify { try refuse(file, name: name) }
            throw KVCError(.notACheckpoint, path: file.path, "no readable v1 or v2 KVC header")
        }
        guard let end = h.bodyEnd, end <= size, h.payloadBytes <= maxPayloadBytes else {
            if verify { try refuse(file, name: name) }
            throw KVCError(.corrupt, path: file.path, "file is \(size) bytes, shorter than its header says")
        }
        return (h, size)
    }

    private func body(of file: borrowing CheckpointFile, header h: KVCHeader, size: UInt64, verify: Bool,
                      into destination: PayloadDestination) throws -> LoadedBody {
        let path = file.path
        let name = String(path.split(separator: "/").last ?? "")
        let end = h.bodyEnd ?? size
        var checksums = Checksums.none
        var warnings: [Problem] = []
        if case .buffer(let dest) = destination, UInt64(dest.count) < h.payloadBytes {
            throw KVCError(.invalidArgument, path: path, "payload buffer of \(dest.count) bytes; the payload is \(h.payloadBytes)")
        }
        if verify {
            var scan = Scan(options: verifierOptions, observer: nil)
            let exam: Scan.Examination
            switch destination {
            case .buffer(let dest):
                scan.payloadDestination = dest
                exam = try scan.examine(file, name: name)
            case .sink(let sink):
                scan.payloadSink = sink
                exam = try scan.examine(file, name: name)
            }
            switch exam.verdict {
            case .corrupt:
                throw KVCError(.corrupt, path: path, "refusing to load: " +
                               exam.problems.filter { $0.severity == .corrupt }.map(\.description).joined(separator: "; "))
            case .incompatible:
                throw KVCError(.incompatible, path: path, "refusing to load: " +
                               exam.problems.filter { $0.severity == .incompatible }.map(\.description).joined(separator: "; "))
            case .ok, .ignored:
                break
            }
            checksums = h.version == 2 ? .crc32c : .none
            warnings = exam.problems.filter { $0.severity == .warning }
        } else {
            // The same chunked reads as the verified path, minus the checks: what today's engine does.
            var scan = Scan(options: verifierOptions, observer: nil)
            let from = UInt64(h.prologueSize) + UInt64(h.textBytes)
            switch destination {
            case .buffer(let dest):
                try scan.streamInto(file, from: from, destination: UnsafeMutableRawBufferPointer(rebasing: dest[0..<Int(h.payloadBytes)])) { _ in }
            case .sink(let sink):
                guard try scan.stream(file, from: from, length: h.payloadBytes, sink) == h.payloadBytes else {
                    throw KVCError(.io, path: path, "file ended while reading the payload")
                }
            }
        }
        let text = try file.read(at: UInt64(h.prologueSize), count: Int(h.textBytes))
        var toolMapBytes: [UInt8]? = nil
        if h.hasToolMap {
            // Read again after the verification: check these bytes themselves (v2: their CRC), so a
            // trailer rewritten in between is refused rather than handed over unchecked. A map that
            // does not parse is the engine's business: it reads maps leniently and restores anyway.
            let bytes = try file.read(at: end, count: Int(size - end))
            if verify {
                if h.version == 2 && CRC32C.checksum(bytes) != h.trailerCRC {
                    throw KVCError(.corrupt, path: path, "refusing to load: the tool-map trailer changed while it was read")
                }
            }
            toolMapBytes = bytes
        }
        return LoadedBody(header: h, fileSize: size, text: text, toolMapBytes: toolMapBytes,
                          checksums: checksums, warnings: warnings)
    }

    private func refuse(_ file: borrowing CheckpointFile, name: String) throws -> Never {
        var scan = Scan(options: verifierOptions, observer: nil)
        let exam = try scan.examine(file, name: name)
        let kind: KVCError.Kind = exam.verdict == .incompatible ? .incompatible : .corrupt
        throw KVCError(kind, path: file.path, "refusing to load: " + exam.problems.map(\.description).joined(separator: "; "))
    }

    /// What the engine requires of a checkpoint it would restore into its session.
    public struct Compatibility: Sendable {
        public var modelID: UInt8
        public var quantBits: UInt8
        public var ctxSize: UInt32
        public var rejectDifferentQuant: Bool
        /// The generation this engine is (file version, payload ABI, payload version); nil: any.
        public var engine: Generation?
        public init(modelID: UInt8, quantBits: UInt8, ctxSize: UInt32, rejectDifferentQuant: Bool = false, engine: Generation? = nil) {
            self.engine = engine
            self.modelID = modelID
            self.quantBits = quantBits
            self.ctxSize = ctxSize
            self.rejectDifferentQuant = rejectDifferentQuant
        }
    }

    /// The longest stored checkpoint whose text is a prefix of `prompt` and
    /// that the engine could restore (same model, quantization when it
    /// matters, context no larger than ours), as `ds4_kvstore_find_text_prefix`
    /// looks it up: by the SHA-1 of each candidate length's prefix, then a
    /// byte comparison of the stored text.
    public func findTextPrefix(in directory: String, prompt: [UInt8], compatibility c: Compatibility) throws -> CacheEntry? {
        let dir = try CacheDirectory(path: directory)
        let candidates = try dir.scan().entries.map { $0.judged(engine: c.engine) }.filter { e in
            guard let h = e.header, e.unusable == nil else { return false }
            return Int(h.textBytes) <= prompt.count && h.textBytes > 0 && h.modelID == c.modelID &&
                (!c.rejectDifferentQuant || h.quantBits == c.quantBits) && h.ctxSize <= c.ctxSize
        }.sorted { ($0.header!.textBytes, $0.sha) > ($1.header!.textBytes, $1.sha) }
        var hashed: [UInt32: String] = [:]
        for e in candidates {
            let len = e.header!.textBytes
            let sha = hashed[len] ?? TextDigest.sha1Hex(prompt[0..<Int(len)])
            hashed[len] = sha
            guard sha == e.sha else { continue }
            let file = try CheckpointFile.open(dir.pathOf(e.fileName), .readOnly)
            let stored = try file.read(at: UInt64(e.header!.prologueSize), count: Int(len))
            if stored.elementsEqual(prompt[0..<Int(len)]) { return e }
        }
        return nil
    }
}
