import CSystemd
import Foundation
import Logging

/// A swift-log handler that writes to the systemd journal natively
/// (`sd_journal_sendv(3)`), so each event is a structured record:
/// PRIORITY, SYSLOG_IDENTIFIER, a stable MESSAGE_ID for the events an
/// operator looks for (given by the daemon's events, see the catalog in packaging/),
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
    /// The MESSAGE_ID for a KVSCRUB_EVENT name, when the event has one (the daemon's event table).
    let messageID: @Sendable (String) -> String?

    public init(identifier: String, messageID: @escaping @Sendable (String) -> String? = { _ in nil }) {
        self.identifier = identifier
        self.messageID = messageID
    }

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
        let fields = JournalLogHandler.fields(level: level, message: message.description, metadata: all, identifier: identifier,
                                              messageID: messageID)
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
    public static func fields(level: Logger.Level, message: String, metadata: Logger.Metadata, identifier: String,
                              messageID: (String) -> String?) -> [[UInt8]] {
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
            if let id = messageID(event) { add("MESSAGE_ID", id) }
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
