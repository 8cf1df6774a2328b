import GRDB
import KVScrubControl

/// A history line as the state database's `history` table keeps it.
extension HistoryEvent {
    init(row: Row) {
        self.init(at: row["at"], action: Action(rawValue: row["action"]) ?? .removed, file: row["file"],
                  bytes: UInt64(bitPattern: row["bytes"]), cause: row["cause"], region: row["region"], detail: row["detail"],
                  expectedCrc: (row["expected_crc"] as Int64?).map { UInt32(truncatingIfNeeded: $0) },
                  actualCrc: (row["actual_crc"] as Int64?).map { UInt32(truncatingIfNeeded: $0) },
                  destination: row["destination"])
    }

    func insert(_ db: Database) throws {
        try db.execute(sql: """
            INSERT INTO history (at, action, file, bytes, cause, region, detail, expected_crc, actual_crc, destination)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [at, action.rawValue, file, Int64(bitPattern: bytes), cause, region, detail,
                             expectedCrc.map { Int64($0) }, actualCrc.map { Int64($0) }, destination])
    }
}
