import GRDB
import KVScrubControl

/// A history line as the state database's `history` table keeps it.
extension HistoryEvent {
    /// nil for a row with an action or cause this version does not know (a newer kvscrubd wrote it):
    /// left out of `history` rather than shown under another name.
    init?(row: Row) {
        guard let action = Action(rawValue: row["action"]), let cause = Cause(rawValue: row["cause"]) else { return nil }
        self.init(at: row["at"], action: action, file: row["file"],
                  bytes: UInt64(bitPattern: row["bytes"]), cause: cause, region: row["region"], detail: row["detail"],
                  expectedCrc: (row["expected_crc"] as Int64?).map { UInt32(truncatingIfNeeded: $0) },
                  actualCrc: (row["actual_crc"] as Int64?).map { UInt32(truncatingIfNeeded: $0) },
                  destination: row["destination"])
    }

    func insert(_ db: Database) throws {
        try db.execute(sql: """
            INSERT INTO history (at, action, file, bytes, cause, region, detail, expected_crc, actual_crc, destination)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [at, action.rawValue, file, Int64(bitPattern: bytes), cause.rawValue, region, detail,
                             expectedCrc.map { Int64($0) }, actualCrc.map { Int64($0) }, destination])
    }
}
