import CSystemd
import Foundation
import Logging

/// A swift-log handler that writes to the systemd journal natively
/// (`sd_journal_sendv(3)`), so each event is a structured record:
/// PRIORITY, SYSLOG_IDENTIFIER, a stable MESSAGE_ID for the events an
/// operator looks for (see `KVScrubMessageID` and the catalog in packaging/),
/// and the event's details as KVSCRUB_* fields, so that
/// `journalctl -u kvscrubd KVSCRUB_REGION=payload` and `journalctl -x` work.
///
/// Metadata keys map to fields by upper-casing and replacing anything outside
/// [A-Z0-9_] with `_` (journal field names allow nothing else): `file` becomes
/// KVSCRUB_FILE, `expected_crc` KVSCRUB_EXPECTED_CRC.
public struct JournalLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let identifier: String

    public init(identifier: String) { self.identifier = identifier }

    /// Journald is there when systemd connected our output to it
    /// (JOURNAL_STREAM) and its native socket exists. `sd_journal_*` itself
    /// returns success even when nobody listens, so it cannot tell.
    public static var journaldPresent: Bool {
        ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil &&
            FileManager.default.fileExists(atPath: "/run/systemd/journal/socket")
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// swift-log's event entry point; the journal record is built by the method below.
    public func log(event: LogEvent) {
        log(level: event.level, message: event.message, metadata: event.metadata, source: event.source,
            file: event.file, function: event.function, line: event.line)
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?,
                    source: String, file: String, function: String, line: UInt) {
        let all = metadata.merging(explicit ?? [:]) { $1 }
        let fields = JournalLogHandler.fields(level: level, message: message.description, metadata: all, identifier: identifier)
        // One buffer holds every field; the iovecs point into it only while it is borrowed.
        var blob: [UInt8] = []
        var spans: [(Int, Int)] = []
        for f in fields {
            spans.append((blob.count, f.count))
            blob += f
        }
        blob.withUnsafeMutableBytes { base in
            let iovs = spans.map { iovec(iov_base: base.baseAddress! + $0.0, iov_len: $0.1) }
            _ = kvs_journal_sendv(iovs, Int32(iovs.count))
        }
    }

    /// The journal fields of one record, as `NAME=value` byte strings.
    public static func fields(level: Logger.Level, message: String, metadata: Logger.Metadata, identifier: String) -> [[UInt8]] {
        var out: [[UInt8]] = []
        func add(_ name: String, _ value: String) { out.append(Array("\(name)=\(value)".utf8)) }
        var text = message
        // The message a person reads in `journalctl` keeps the details, as the stderr format does.
        let details = metadata.keys.sorted().filter { $0 != "event" }.map { "\($0)=\(metadata[$0]!)" }
        if !details.isEmpty { text += " (" + details.joined(separator: " ") + ")" }
        add("MESSAGE", text)
        add("PRIORITY", String(priority(level)))
        add("SYSLOG_IDENTIFIER", identifier)
        if case .string(let event)? = metadata["event"] {
            if let id = KVScrubMessageID.id(forEvent: event) { add("MESSAGE_ID", id) }
        }
        for (k, v) in metadata {
            add("KVSCRUB_" + fieldName(k), "\(v)")
        }
        return out
    }

    static func fieldName(_ key: String) -> String {
        String(key.uppercased().map { c -> Character in
            (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c == "_" ? c : "_"
        })
    }

    /// syslog priorities, as journald stores them.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }
}

/// Stable MESSAGE_IDs (128-bit, as `journalctl --new-id128` makes them) for
/// the events an operator may want to find; packaging/kvscrubd.catalog
/// explains each one. Never change an id once released: saved searches use it.
public enum KVScrubMessageID {
    public static let byEvent: [String: String] = [
        "corrupt-found": "4f1c8d2a9b6e4e0f8a3d5c7b1e2f9a60",
        "corrupt-removed": "7a2e5c9d1f3b4a8e9c0d2b4f6a8e1c31",
        "evicted": "c3b1e7f9a2d44c6e8b0a1f3d5e7c9b12",
        "scrub-pass-finished": "1e9d7c5b3a2f4e6d8c0b9a7f5e3d1c23",
        "budget-exceeded": "9b8a7c6d5e4f4a3b9c2d1e0f8a7b6c54",
        "regret": "66257d03c5044d388335df09b6fbf60d",
        "removal-brake-engaged": "3e8f198528904ae69f3c6abd09d365cd",
        "corrupt-kept": "ccb74004027a4318a603fa7ffe849721",
        "state-db-damaged": "b555359180d445df91b4ccec8a2b1f61",
        "remove-failed": "f530bacc59d04ab5991e0fbd0b54960d",
        "evict-failed": "7d5dee888599497aa5c6da33ef7fa974",
        "directory-gone": "d92b9dd018d54b4b94aa4944c4e1c254",
        "directory-watch-failed": "65675f26a373405aba7ae79721edb652",
        "reload-failed": "942867d96e3447d488a77ecb7d768e35",
        "scrub-error": "094491447d6141308fc570ab3b55f75d",
        "index-failed": "48395a704ff04e73a614a696293a263c",
        "quarantine-failed": "f1723b025ee845a9843fb28b70a26351",
        "state-save-failed": "6b7cd70a5420443c9cf5f942e93a63a8",
        "state-db-unavailable": "0bacb32987ee47c5b1ff2b593785b167",
    ]

    public static func id(forEvent event: String) -> String? { byEvent[event] }
}
