import SystemPackage

/// Classifies a file as ok / corrupt / incompatible / ignored, exactly as
/// kvc-format.md revision 2's "What a checker concludes" says, listing every
/// problem.
///
/// How it reads: the prologue first, then the text (always: its SHA-1 must be
/// the file name), then the payload (whole for v2, for its CRC; only the
/// 52-byte prefix for v1, which has no CRC to check), then the trailer. All of
/// it streamed through one reusable buffer, so memory does not grow with the
/// file, and lengths from the header are bounded by the file's real size
/// before anything is read, so a damaged length field costs nothing.
///
/// Why it watches the file instead of locking it: the real engine takes no
/// locks. It touches a checkpoint with one write of the header and rewrites a
/// tool map by truncating, writing, then rewriting the header, so a read that
/// races either sees a torn header or a half-written trailer. What the reader
/// can observe is the file's stamp (inode, size, mtime, ctime, `FileStamp`):
/// taken before the first byte and after the last, equal stamps mean nothing
/// wrote to the file meanwhile and the verdict describes one state of it.
/// When the stamps differ and something looked wrong, the file is examined
/// again (text and payload digests are reused: the engine never rewrites
/// those bytes in place, and the inode is the same), a few times at most;
/// the report says whether its last read was undisturbed. Only an
/// undisturbed verdict may ever lead to a removal, and the removal rule
/// (`CacheDirectory+SafeRemoval.swift`) asks for a second one after the
/// file has settled.
public struct Verifier: Sendable {
    public struct Options: Sendable {
        /// Bytes per read. 1 MiB keeps syscalls few and the buffer in L2-ish reach.
        public var chunkSize: Int = 1 << 20
        /// The generation of the engine in force; nil: not known, no file is incompatible for its
        /// generation and the rules that hold only within it are not applied.
        public var engine: Generation?
        /// How many more looks a file that changed under a read gets before the report says so.
        public var rereadsWhenChanged = 3
        /// Read a v1 file's whole payload too, and report the CRC32C of its text and payload
        /// (`VerifyReport.bodyChecksums`), so they can be recorded (`RecordedChecksum`).
        public var checksumV1Body = false
        /// Checksums recorded for this file earlier: compared when their key matches the file
        /// (same inode, lengths and created_at); a difference is damage to the text or payload.
        public var recorded: RecordedChecksum?
        public init() {}
    }

    /// A payload magic as its four ASCII bytes when printable (`DSVL`), else in hex.
    static func fourCC(_ v: UInt32) -> String {
        let b = (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) }
        return b.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) ? String(decoding: b, as: UTF8.self) : hex32(v)
    }

    public var options: Options
    /// Told about every chunk read, in order, so a scrubber can pace itself and
    /// drop pages it pulled into the cache. Not called for the prologue.
    public var observer: (any ReadObserver)?

    public init(options: Options = Options(), observer: (any ReadObserver)? = nil) {
        self.options = options
        self.observer = observer
    }

    public init(engine: Generation?, observer: (any ReadObserver)? = nil) {
        var o = Options()
        o.engine = engine
        self.init(options: o, observer: observer)
    }

    /// The daemon's verifier: v1 bodies checksummed, and compared with `recorded` when there is one.
    public init(engine: Generation?, recorded: RecordedChecksum?, observer: (any ReadObserver)? = nil) {
        var o = Options()
        o.engine = engine
        o.checksumV1Body = true
        o.recorded = recorded
        self.init(options: o, observer: observer)
    }

    /// Verifies the file at `path`. Paths that are not checkpoints (other
    /// names, temporary files, links, directories) come back `ignored` without
    /// being opened. Throws `KVCError` only when the file cannot be read.
    public func verify(path: String) throws -> VerifyReport {
        let name = String(path.split(separator: "/", omittingEmptySubsequences: true).last ?? "")
        let st = try FileStatus.of(path: path)
        if let reason = Verifier.ignoreReason(name: name, status: st) {
            return Verifier.ignored(path: path, name: name, size: st.size, note: reason)
        }
        let file = try CheckpointFile.open(path, .readOnly)
        return try verify(file, name: name)
    }

    /// Verifies a file already opened (relative to its directory, by the daemon).
    public func verify(fd: FileDescriptor, name: String, path: String) throws -> VerifyReport {
        let file = CheckpointFile(adopting: try fd.duplicate(), path: path)
        return try verify(file, name: name)
    }

    /// Why a directory entry is not a checkpoint, or nil when it is one.
    public static func ignoreReason(name: String, status: FileStatus) -> String? {
        if status.isSymlink { return "symbolic link: never followed" }
        if status.isDirectory { return "directory" }
        if !status.isRegular { return "not a regular file" }
        if CheckpointName.isTemporary(name) { return "store in progress (temporary file)" }
        if CheckpointName.isTakenAway(name) { return "kvscrubd's own name for a file being removed" }
        if !CheckpointName.isCheckpoint(name) { return "name is not <40 hex digits>.kv (nor ds4-agent's sysprompt.kv)" }
        return nil
    }

    static func ignored(path: String, name: String, size: UInt64, note: String) -> VerifyReport {
        VerifyReport(path: path, name: name, verdict: .ignored, version: nil, checksums: .none, problems: [],
                     header: nil, generation: nil, fileSize: size, identity: nil, note: note, before: nil, after: nil, bytesRead: 0,
                     bodyChecksums: nil)
    }

    func verify(_ file: borrowing CheckpointFile, name: String) throws -> VerifyReport {
        defer { observer?.finished(fd: file.fd) }
        var scan = Scan(options: options, observer: observer)
        var before = try file.status().stamp
        var exam = try scan.examine(file, name: name)
        var after = try file.status().stamp
        var looks = 0
        while before != after && exam.verdict != .ok && looks < options.rereadsWhenChanged {
            looks += 1
            before = after
            exam = try scan.examine(file, name: name)
            after = try file.status().stamp
        }
        return VerifyReport(
            path: file.path, name: name, verdict: exam.verdict, version: exam.header?.version ?? exam.versionByte,
            checksums: exam.header?.version == 2 && exam.generation != nil ? .crc32c : (exam.comparedWithRecord ? .recorded : .none),
            problems: exam.problems, header: exam.header, generation: exam.generation,
            fileSize: after.size, identity: after.identity, note: nil, before: before, after: after,
            bytesRead: scan.bytesRead, bodyChecksums: exam.bodyChecksums)
    }
}

/// Receives each chunk a checker or loader read: the scrubber's rate limit
/// and page-cache hygiene hang off this.
public protocol ReadObserver: Sendable {
    /// About to read `count` bytes at `offset` of `fd`; told before every read of the file, including
    /// the small ones of its header, payload prefix and trailer, which have no `didRead`.
    func willRead(fd: FileDescriptor, offset: UInt64, count: Int) throws
    /// Just read that span. Throwing abandons the verification (the error propagates).
    func didRead(fd: FileDescriptor, offset: UInt64, count: Int) throws
    /// The verification of `fd` is over (whatever its outcome); `fd` is still open.
    func finished(fd: FileDescriptor)
}

extension ReadObserver {
    public func willRead(fd: FileDescriptor, offset: UInt64, count: Int) throws {}
    public func finished(fd: FileDescriptor) {}
}

/// One verification's working state: the read buffer, and the digests of the
/// immutable regions (text, payload) so a confirming second look does not read
/// them again.
struct Scan {
    struct Examination {
        var header: KVCHeader?
        var versionByte: UInt8?
        var problems: [Problem]
        /// v1 only, with `checksumV1Body`: what the text and payload hashed to, and the key they belong to.
        var bodyChecksums: BodyChecksums?
        /// v1 only: the file matched `Options.recorded`'s key and its checksums were compared.
        var comparedWithRecord = false
        /// The file's own generation (header bytes 3 and 20, the payload's version), when its header could be placed.
        var generation: Generation?
        /// A titled ds4-agent session's title, when its trailer parsed.
        var title: [UInt8]?
        var verdict: Verdict {
            if problems.contains(where: { $0.severity == .corrupt }) { return .corrupt }
            if problems.contains(where: { $0.severity == .incompatible }) { return .incompatible }
            return .ok
        }
    }

    /// What the immutable regions hashed to, keyed by the inode and the layout that located them.
    struct BodyDigest {
        var key: [UInt64]
        var identity: FileIdentity
        var textSHA1: String?
        var textCRC: UInt32?
        var payloadCRC: UInt32?
        var prefix: PayloadPrefix?
        var tag: PayloadTag = .absent
    }

    let options: Verifier.Options
    let observer: (any ReadObserver)?
    var body: BodyDigest?
    var bytesRead: UInt64 = 0
    /// When set, payload bytes are read into this buffer (a verified load) rather than a scratch one.
    var payloadDestination: UnsafeMutableRawBufferPointer?
    /// When set, each payload chunk is handed here after it is CRC'd (a verified load through a callback).
    var payloadSink: ((UnsafeRawBufferPointer) throws -> Void)?
    private var scratch: ReadBuffer?

    init(options: Verifier.Options, observer: (any ReadObserver)?) {
        self.options = options
        self.observer = observer
    }

    mutating func examine(_ file: borrowing CheckpointFile, name: String) throws -> Examination {
        let size = try file.size
        guard size > 0 else { return Examination(problems: [Problem(.size, .corrupt, "empty file")]) }
        // Told before the first byte is read, so an observer sees the file's cache state as it was.
        try observer?.willRead(fd: file.fd, offset: 0, count: KVCHeader.v2PrologueSize)
        let head = try file.read(at: 0, count: KVCHeader.v2PrologueSize)
        let h: KVCHeader
        switch KVCHeader.probe(head) {
        case .short(let have, let need):
            let what = need == 4 ? "a KVC header" : "its v\(head[3]) prologue (\(need) bytes)"
            return Examination(versionByte: have >= 4 ? head[3] : nil, problems: [
                Problem(.size, .corrupt, "file is \(size) bytes, too short for \(what)")])
        case .badMagic(let m):
            // Not a KVC file at all: another tool's format under a checkpoint's name is not ours to judge.
            return Examination(problems: [Problem(.header, .incompatible,
                "magic is \(m.map { hex8($0) }.joined(separator: " ")), expected 4b 56 43 (KVC): not a KVC file; not checked further")])
        case .unknownVersion(let v):
            // Another tool or fork may own the version byte: never damage, never removed as corrupt.
            return Examination(versionByte: v, problems: [Problem(.header, .incompatible,
                "unknown version \(v) (this checker reads 1 and 2); not checked further")])
        case .header(let parsed):
            h = parsed
        }

        var problems: [Problem] = []
        let v2 = h.version == 2
        if v2 && h.computedHeaderCRC != h.headerCRC {
            // PR #146 writes byte 20 as 0. Other code of the ds4 family reuses version 2 for
            // another layout (byte 20 = 3: a tail offset at 40..47, position blocks appended in
            // place), where bytes 48..67 mean something else: a file we cannot place is never judged.
            guard h.payloadABI == KVCHeader.pr146PayloadABI else {
                return Examination(header: h, versionByte: 2, problems: [Problem(.header, .incompatible,
                    "unknown layout: version 2 with byte 20 = \(h.payloadABI) and no valid PR #146 header CRC (another engine's format); not checked further")])
            }
            problems.append(Problem(.header, .corrupt, "header CRC mismatch", expectedCRC: h.headerCRC, actualCRC: h.computedHeaderCRC))
        }
        let headerTrusted = problems.isEmpty
        guard let end = h.bodyEnd else {
            problems.append(Problem(.size, .corrupt, "text and payload lengths overflow a 64-bit file size"))
            return Examination(header: h, problems: problems)
        }
        if size < end {
            problems.append(Problem(.size, .corrupt,
                "file is \(size) bytes; prologue + text + payload need \(end) (text \(h.textBytes), payload \(h.payloadBytes))"))
        }

        let digest = try digestBody(file, header: h, size: size)
        let generation = Generation(header: h, payload: digest.tag)
        // Within the running generation the engine's own rules are evidence; outside it, they
        // are another engine's business (kvc-format.md revision 3, "What a checker concludes").
        let refusal = options.engine.flatMap { $0.refusal(of: generation) }
        let ofRunningGeneration = headerTrusted && options.engine != nil && refusal == nil
        if headerTrusted, let refusal {
            problems.append(Problem(.header, .incompatible, refusal))
        }
        if headerTrusted {
            // ds4_kvstore_read_header: tokens != 0 and quant 2 or 4, else the file is left out of the index.
            let severity: Problem.Severity = ofRunningGeneration ? .corrupt : .incompatible
            let why = ofRunningGeneration ? "" : " (no engine indexes such a file)"
            if h.tokens == 0 { problems.append(Problem(.header, severity, "token count is 0" + why)) }
            if h.quantBits != 2 && h.quantBits != 4 {
                problems.append(Problem(.header, severity, "quant_bits is \(h.quantBits), expected 2 or 4" + why))
            }
        }
        if v2, let actual = digest.textCRC, actual != h.textCRC {
            problems.append(Problem(.text, .corrupt, "text CRC mismatch", expectedCRC: h.textCRC, actualCRC: actual))
        }
        if v2, let actual = digest.payloadCRC, actual != h.payloadCRC {
            problems.append(Problem(.payload, .corrupt, "payload CRC mismatch", expectedCRC: h.payloadCRC, actualCRC: actual))
        }
        // v1: the checksums a daemon recorded, when they belong to this very file (the key matches).
        var bodyChecksums: BodyChecksums?
        var compared = false
        if !v2, let t = digest.textCRC, let p = digest.payloadCRC {
            let key = RecordedChecksum.Key(identity: digest.identity, header: h)
            bodyChecksums = BodyChecksums(key: key, textCRC: t, payloadCRC: p)
            if let rec = options.recorded, rec.key == key {
                compared = true
                if t != rec.textCRC {
                    problems.append(Problem(.text, .corrupt, "text differs from the checksum recorded on \(rec.recordedAtText)",
                                            expectedCRC: rec.textCRC, actualCRC: t))
                }
                if p != rec.payloadCRC {
                    problems.append(Problem(.payload, .corrupt, "payload differs from the checksum recorded on \(rec.recordedAtText)",
                                            expectedCRC: rec.payloadCRC, actualCRC: p))
                }
            }
        }
        // The payload's own prefix: evidence only within the running generation, whose layout we know.
        if ofRunningGeneration && h.payloadBytes >= UInt64(PayloadPrefix.size) {
            switch digest.tag {
            case .otherKind(let magic):
                problems.append(Problem(.payload, .incompatible,
                    "payload kind \(Verifier.fourCC(magic)) (the ds4 family's, not DSV4): another engine generation"))
            case .dsv4, .foreign:
                if let p = digest.prefix {
                    for defect in p.defects(tokens: h.tokens, ctxSize: h.ctxSize, payloadBytes: h.payloadBytes) {
                        problems.append(Problem(.payload, .corrupt, defect))
                    }
                }
            case .absent:
                break
            }
        }

        var title: [UInt8]?
        if size >= end {
            let trailerLength = size - end
            // Bytes at an offset within the trailer; nil on a short read (the file shrank meanwhile).
            func readTrailer(_ off: UInt64, _ count: Int) throws -> [UInt8]? {
                try observer?.willRead(fd: file.fd, offset: end + off, count: count)
                let b = try file.read(at: end + off, count: count)
                return b.count == count ? b : nil
            }
            if h.hasSessionTitle {
                // ds4-agent: u32 title length, the title, to end of file (agent_kv_read_title_trailer).
                switch try SessionTitle.read(length: trailerLength, readTrailer) {
                case .title(let t, let used):
                    title = t
                    if used < trailerLength {
                        problems.append(Problem(.trailer, .warning, "\(trailerLength - used) bytes after the session title trailer"))
                    }
                case .malformed(let why):
                    problems.append(Problem(.trailer, .warning, why + "; the file name cannot be checked against the title"))
                }
                if h.hasToolMap {
                    problems.append(Problem(.trailer, .warning, "ext bits 0 and 3 both set: the trailer is read as ds4-agent's session title"))
                }
            } else if h.hasToolMap {
                // The engine reads a tool map leniently and can itself leave bit 0 set with no
                // trailer: a map that does not parse is a warning, never damage (v2's CRC decides there).
                let failure = try ToolMap.walk(length: trailerLength, read: readTrailer,
                                               limits: { problems.append(Problem(.trailer, .warning, $0)) })
                if let failure { problems.append(Problem(.trailer, .warning, failure + " (the engine restores the checkpoint with fewer tool entries)")) }
            } else if trailerLength > 0 && !v2 {
                problems.append(Problem(.trailer, .warning,
                    "\(trailerLength) bytes after the payload and no tool-map flag (an interrupted trailer rewrite leaves this; the engine ignores them)"))
            }
            if v2 {
                var crc = CRC32C()
                let got = try stream(file, from: end, length: trailerLength) { crc.update($0) }
                if got < trailerLength {
                    // Only an in-place trailer rewrite truncates here: the stamps will differ and the file is read again.
                    problems.append(Problem(.trailer, .corrupt, "file ended \(trailerLength - got) bytes early while the trailer was read"))
                } else if crc.value != h.trailerCRC {
                    problems.append(Problem(.trailer, .corrupt, "trailer CRC mismatch (\(trailerLength) bytes after the payload)",
                                            expectedCRC: h.trailerCRC, actualCRC: crc.value))
                }
            }
        }

        // The name: SHA-1 of the text, or for a titled ds4-agent session of the title and created_at
        // (agent_session_identity_sha); sysprompt.kv is checked against the prompt by the agent, not by name.
        if let named = CheckpointName.sha(of: name) {
            if h.hasSessionTitle {
                if let title {
                    let sha = SessionTitle.identity(title: title, createdAt: h.createdAt)
                    if sha != named {
                        problems.append(Problem(.name, .corrupt,
                            "SHA-1 of the session title and created_at is \(sha); the file is named \(named)"))
                    }
                }
            } else if let sha = digest.textSHA1, sha != named {
                problems.append(Problem(.name, .corrupt, "SHA-1 of the text is \(sha); the file is named \(named)"))
            }
        }
        return Examination(header: h, problems: problems, bodyChecksums: bodyChecksums, comparedWithRecord: compared,
                           generation: generation, title: title)
    }

    /// Hashes text and payload, once per layout. Regions cut short by the end
    /// of the file are left undigested: the size problem already says so.
    private mutating func digestBody(_ file: borrowing CheckpointFile, header h: KVCHeader, size: UInt64) throws -> BodyDigest {
        let textStart = UInt64(h.prologueSize)
        let payloadStart = textStart + UInt64(h.textBytes)
        let st = try file.status()
        let key = [st.device, st.inode, UInt64(h.version), UInt64(h.textBytes), h.payloadBytes, min(size, h.bodyEnd ?? 0)]
        if let body, body.key == key { return body }
        var d = BodyDigest(key: key, identity: FileIdentity(device: st.device, inode: st.inode))
        if payloadStart <= size {
            var sha = TextDigest()
            var crc = CRC32C()
            let got = try stream(file, from: textStart, length: UInt64(h.textBytes)) { chunk in
                sha.update(chunk)
                crc.update(chunk)
            }
            if got == UInt64(h.textBytes) {
                d.textSHA1 = sha.hex()
                d.textCRC = crc.value
            }
        }
        let payloadPresent = payloadStart <= size ? min(h.payloadBytes, size - payloadStart) : 0
        if payloadPresent >= 8 {
            let count = Int(min(UInt64(PayloadPrefix.size), payloadPresent))
            try observer?.willRead(fd: file.fd, offset: payloadStart, count: count)
            let b = try file.read(at: payloadStart, count: count)
            b.withUnsafeBytes { raw in
                d.tag = PayloadTag(decoding: raw, payloadBytes: h.payloadBytes)
                if raw.count == PayloadPrefix.size { d.prefix = PayloadPrefix(decoding: raw) }
            }
        }
        if payloadPresent == h.payloadBytes && (h.version == 2 || payloadDestination != nil || payloadSink != nil || options.checksumV1Body || options.recorded != nil) {
            var crc = CRC32C()
            if let dest = payloadDestination {
                precondition(UInt64(dest.count) >= h.payloadBytes)
                let region = UnsafeMutableRawBufferPointer(rebasing: dest[0..<Int(h.payloadBytes)])
                if region.count >= StripedRead.minimumBytes && observer == nil && StripedRead.worthIt {
                    // Two threads, each reading and checksumming alternate pieces (see StripedRead).
                    d.payloadCRC = try StripedRead.read(fd: file.fd, path: file.path, from: payloadStart, into: region,
                                                        piece: options.chunkSize)
                    bytesRead += UInt64(region.count)
                } else {
                    try streamInto(file, from: payloadStart, destination: region) { crc.update($0) }
                    d.payloadCRC = crc.value
                }
            } else if let sink = payloadSink {
                let got = try stream(file, from: payloadStart, length: h.payloadBytes) { crc.update($0); try sink($0) }
                guard got == h.payloadBytes else {
                    throw KVCError(.io, path: file.path, "file ended while reading at \(payloadStart + got)")
                }
                d.payloadCRC = crc.value
            } else if try stream(file, from: payloadStart, length: h.payloadBytes, { crc.update($0) }) == h.payloadBytes {
                d.payloadCRC = crc.value
            }
        }
        body = d
        return d
    }

    /// Feeds `length` bytes from `offset` to `body` chunk by chunk through the
    /// scratch buffer. Returns how many bytes there were: fewer than `length`
    /// when the file ended first (it can shrink while we read).
    @discardableResult
    mutating func stream(_ file: borrowing CheckpointFile, from offset: UInt64, length: UInt64,
                         _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64 {
        guard length > 0 else { return 0 }
        let chunk = options.chunkSize
        let buf: UnsafeMutableRawBufferPointer
        if let scratch { buf = scratch.bytes } else {
            let fresh = ReadBuffer(count: chunk)
            scratch = fresh
            buf = fresh.bytes
        }
        var done: UInt64 = 0
        while done < length {
            let want = Int(min(UInt64(chunk), length - done))
            try observer?.willRead(fd: file.fd, offset: offset + done, count: want)
            let n = try file.read(at: offset + done, into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<want]))
            guard n > 0 else { break }
            try observer?.didRead(fd: file.fd, offset: offset + done, count: n)
            try body(UnsafeRawBufferPointer(rebasing: buf[0..<n]))
            done += UInt64(n)
            bytesRead += UInt64(n)
        }
        return done
    }

    /// Reads straight into `destination`, handing each chunk to `body` while it is still hot in cache.
    mutating func streamInto(_ file: borrowing CheckpointFile, from offset: UInt64,
                             destination: UnsafeMutableRawBufferPointer,
                             _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        var done = 0
        while done < destination.count {
            let want = min(options.chunkSize, destination.count - done)
            let slice = UnsafeMutableRawBufferPointer(rebasing: destination[done..<done + want])
            try observer?.willRead(fd: file.fd, offset: offset + UInt64(done), count: want)
            let n = try file.read(at: offset + UInt64(done), into: slice)
            guard n > 0 else { throw KVCError(.io, path: file.path, "file ended while reading at \(offset + UInt64(done))") }
            try observer?.didRead(fd: file.fd, offset: offset + UInt64(done), count: n)
            try body(UnsafeRawBufferPointer(rebasing: slice[0..<n]))
            done += n
            bytesRead += UInt64(n)
        }
    }
}

func hex8(_ v: UInt8) -> String {
    let s = String(v, radix: 16)
    return s.count == 1 ? "0" + s : s
}

/// The scan's one read buffer, page-aligned, freed with the scan. A class so
/// the buffer can be lent out while the scan's own counters are updated.
final class ReadBuffer {
    let bytes: UnsafeMutableRawBufferPointer
    init(count: Int) { bytes = .allocate(byteCount: count, alignment: 4096) }
    deinit { bytes.deallocate() }
}
