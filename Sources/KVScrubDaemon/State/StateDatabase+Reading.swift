import Foundation
import GRDB
import KVCFormat
import KVScrubControl
import SystemPackage

/// Reading the state database: at start-up, for `history`, and read-only from
/// another process (`verify --recorded`, tests).
extension StateDatabase {
    func pool() throws -> DatabasePool {
        guard let p = db.withLockedValue({ $0?.pool }) else {
            throw Failure(step: "use", path: path, underlying: DatabaseError(resultCode: .SQLITE_MISUSE, message: "the database is not open"))
        }
        return p
    }

    func loadCore() throws -> Core? { try pool().read(Self.core) }

    func loadRecords() throws -> [String: RecordedChecksum] { try pool().read(Self.records) }

    static func core(_ db: Database) throws -> Core? {
        guard let json = try String.fetchOne(db, sql: "SELECT core FROM daemon_state WHERE id = 1") else { return nil }
        return try JSONDecoder().decode(Core.self, from: Data(json.utf8))
    }

    static func records(_ db: Database) throws -> [String: RecordedChecksum] {
        var out: [String: RecordedChecksum] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT * FROM recorded_checksum") {
            let key = RecordedChecksum.Key(
                device: UInt64(bitPattern: row["device"]), inode: UInt64(bitPattern: row["inode"]),
                textBytes: UInt32(truncatingIfNeeded: row["text_bytes"] as Int64),
                payloadBytes: UInt64(bitPattern: row["payload_bytes"]), createdAt: UInt64(bitPattern: row["created_at"]))
            out[row["name"]] = RecordedChecksum(key: key, textCRC: UInt32(truncatingIfNeeded: row["text_crc"] as Int64),
                                                payloadCRC: UInt32(truncatingIfNeeded: row["payload_crc"] as Int64),
                                                recordedAt: row["recorded_at"])
        }
        return out
    }

    func loadRecentEvictions() throws -> [String: EvictionLedger.Eviction] {
        try pool().read { db in
            var out: [String: EvictionLedger.Eviction] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT name, at, bytes FROM recent_eviction") {
                out[row["name"]] = EvictionLedger.Eviction(at: row["at"], bytes: UInt64(bitPattern: row["bytes"]))
            }
            return out
        }
    }

    /// History, newest first.
    func history(since: Double? = nil, cause: HistoryEvent.Cause? = nil, limit: Int = 1000) throws -> [HistoryEvent] {
        try pool().read { db in
            var sql = "SELECT * FROM history WHERE at >= ?"
            var args: [any DatabaseValueConvertible] = [since ?? 0]
            if let cause { sql += " AND cause = ?"; args.append(cause.rawValue) }
            sql += " ORDER BY id DESC LIMIT ?"
            args.append(max(0, limit))
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).compactMap(HistoryEvent.init(row:))
        }
    }

    /// Opens a database read-only, for a process other than the daemon (`verify --recorded`, tests).
    public static func readOnly(directory: String) throws -> ReadOnly {
        let path = directory + "/state.sqlite"
        guard FileManager.default.fileExists(atPath: path) else {
            throw Failure(step: "open", path: path, underlying: Errno.noSuchFileOrDirectory)
        }
        return ReadOnly(queue: try readOnlyQueue(path))
    }

    /// A read-only view of a database another process writes.
    public struct ReadOnly: Sendable {
        let queue: DatabaseQueue

        public func records() throws -> [String: RecordedChecksum] { try queue.read(StateDatabase.records) }

        func core() throws -> Core? { try queue.read(StateDatabase.core) }

        func historyCount() throws -> Int {
            try queue.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM history") ?? 0 }
        }
    }
}
