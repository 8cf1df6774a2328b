/// File names in a cache directory. Only `<40 hex>.kv` is a checkpoint; the
/// engine accepts hex in either case and names the file after the SHA-1 of
/// the text in lower case (`ds4_kvstore_sha_hex_name`).
public enum CheckpointName {
    public static let suffix = ".kv"

    /// The lower-case SHA-1 a checkpoint's name carries, or nil when the name is not a checkpoint's.
    public static func sha(of name: String) -> String? {
        let u = Array(name.utf8)
        guard u.count == 43, name.hasSuffix(suffix) else { return nil }
        for c in u[0..<40] where !isHex(c) { return nil }
        return String(decoding: u[0..<40], as: UTF8.self).lowercased()
    }

    /// ds4-agent's fixed name for its bootstrap checkpoint: a checkpoint whose text the agent
    /// compares with the current system prompt, so its name says nothing about its content.
    public static let agentSystemPrompt = "sysprompt.kv"

    public static func isCheckpoint(_ name: String) -> Bool { sha(of: name) != nil || name == agentSystemPrompt }

    /// The index's key for a checkpoint name: the lower-case SHA-1, or the name itself for
    /// `sysprompt.kv`; nil when the name is not a checkpoint's.
    public static func key(of name: String) -> String? {
        sha(of: name) ?? (name == agentSystemPrompt ? agentSystemPrompt : nil)
    }

    /// A store in progress: the server's `<sha>.kv.tmp.<pid>`, ds4-agent's `<name>.tmp.XXXXXX`
    /// (mkstemp) for `<sha>.kv` or `sysprompt.kv`. Never ours to read or remove as a checkpoint.
    public static func isTemporary(_ name: String) -> Bool {
        // The standard library's search on the UTF-8 bytes: Foundation's `range(of:)` went through
        // NSString, a cost the orphan sweep paid for every name in the directory.
        let u = name.utf8
        guard let r = u.firstRange(of: ".kv.tmp.".utf8), r.upperBound < u.endIndex else { return false }
        return isCheckpoint(String(decoding: u[..<r.lowerBound], as: UTF8.self) + suffix)
    }

    public static func fileName(sha: String) -> String { sha + suffix }

    /// The private name a checkpoint is renamed to while kvscrubd removes it:
    /// `.kvscrubd-taken.<name>.<inode>`. A dot file that no engine generation
    /// reads as a checkpoint (not 43 bytes, not `<sha>.kv.tmp.`), and that
    /// carries the original name so a start-up after a crash can put it back.
    public static let takenAwayPrefix = ".kvscrubd-taken."

    public static func takenAwayName(for name: String, inode: UInt64) -> String { "\(takenAwayPrefix)\(name).\(inode)" }

    public static func isTakenAway(_ name: String) -> Bool { originalName(ofTakenAway: name) != nil }

    /// The checkpoint name a private name was taken from, or nil when `name` is not one of ours.
    public static func originalName(ofTakenAway name: String) -> String? {
        guard name.hasPrefix(takenAwayPrefix) else { return nil }
        let rest = name.dropFirst(takenAwayPrefix.count)
        guard let dot = rest.lastIndex(of: "."), UInt64(rest[rest.index(after: dot)...]) != nil else { return nil }
        let original = String(rest[..<dot])
        return isCheckpoint(original) ? original : nil
    }

    public static func temporaryName(sha: String, pid: Int32) -> String { "\(sha)\(suffix).tmp.\(pid)" }

    private static func isHex(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46)
    }
}
