import Foundation
import GRDB
import KVCFormat
import KVScrubControl
import NIOConcurrencyHelpers
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The daemon's memory across restarts: `<state_dir>/state.sqlite`, SQLite in
/// WAL mode through GRDB.
///
/// What it holds: the scrub's progress, the counters, the removal brake and
/// the files waiting for a second look (one row, `daemon_state`); the regret
/// window (`recent_eviction`); the checksums recorded for v1 files
/// (`recorded_checksum`); and a history of every removal, quarantine and
/// eviction (`history`), kept `history_days`.
///
/// How it is written: never on the caller's thread. Callers hand changes to
/// `enqueue`, which merges them into one pending batch (the state row and
/// each record or eviction by name: last write wins; history appended, at
/// most `maxPendingHistory` rows), and one serial queue writes each batch in
/// one transaction. A SIGKILL therefore loses at most the batch in flight;
/// SQLite's WAL keeps the file whole. A failed batch (a full disk, EIO) is
/// merged back and tried again 5 s later, so nothing is lost while the fault
/// lasts and memory stays bounded by the number of files.
///
/// Faults of the database itself: deleted, truncated, overwritten with
/// garbage, at start-up or while running. The database is advisory: nothing
/// in it can cause a removal (a record only ever adds a check; a missing one
/// removes it). So a database that cannot be used is moved aside
/// (`state.sqlite.damaged.<time>`), reported, and a new one is started from
/// what the daemon holds in memory (`Snapshot`); v1 files without a record
/// are recorded again at their next verification.
public final class StateDatabase: Sendable {
    /// The persisted part of the scrubber's, the counters' and the ledger's state.
    struct Core: Codable, Sendable, Equatable {
        var scrub: ScrubProgress
        var counters: DaemonCounters
        var brake: RemovalBrake
        var pendingRemovals: [String]
        var regretLog: [EvictionLedger.Regret]

        init(scrub: ScrubProgress, counters: DaemonCounters, brake: RemovalBrake,
                    pendingRemovals: [String], regretLog: [EvictionLedger.Regret]) {
            self.scrub = scrub
            self.counters = counters
            self.brake = brake
            self.pendingRemovals = pendingRemovals
            self.regretLog = regretLog
        }
    }

    /// Everything the daemon can write again from memory into a new database.
    struct Snapshot: Sendable {
        var core: Core?
        var records: [String: RecordedChecksum] = [:]
        var recentEvictions: [String: EvictionLedger.Eviction] = [:]
        init(core: Core? = nil, records: [String: RecordedChecksum] = [:], recentEvictions: [String: EvictionLedger.Eviction] = [:]) {
            self.core = core
            self.records = records
            self.recentEvictions = recentEvictions
        }
    }

    /// One change to persist.
    enum Change: Sendable {
        case core(Core)
        case record(String, RecordedChecksum?)
        case eviction(String, EvictionLedger.Eviction?)
        case history(HistoryEvent)
    }

    /// Why the database could not be used, with the step and SQLite's word on it.
    struct Failure: Error, CustomStringConvertible {
        let step: String
        let path: String
        let underlying: any Error
        var description: String { "\(step) \(path): \(underlying)" }
    }

    /// What `open` found, for the start-up log.
    struct Opening: Sendable {
        /// What the database held (empty for a new one).
        var snapshot = Snapshot()
        /// Why no database could be opened at all (the daemon runs on; saves try again).
        var unavailable: String?
        var migratedFrom: String?
        var legacyUnreadable: String?
    }

    let path: String
    /// The live database and the inode it was opened on (a replaced or deleted file is noticed).
    let db: NIOLockedValueBox<(pool: DatabasePool, inode: UInt64)?>
    let pending = NIOLockedValueBox(Pending())
    let writer = DispatchQueue(label: "kvscrubd-state-db")
    let snapshot: @Sendable () -> Snapshot
    let report: @Sendable (String, any Error) -> Void
    /// Told when a damaged database was moved aside (to where), at start-up or while running, and a new one started.
    let replaced: @Sendable (String, any Error) -> Void
    /// Told when writes succeed again after this many failed attempts.
    let recovered: @Sendable (Int) -> Void
    /// Failed write attempts in a row, and when the last was reported.
    let failures = NIOLockedValueBox((count: 0, lastReport: 0.0))
    let faults: TestFaults
    let historyDays: @Sendable () -> Double
    let lastPrune = NIOLockedValueBox(0.0)
    /// When the file was last checked (`PRAGMA quick_check`): damage under a live connection
    /// shows only when a page is read, and the daemon mostly writes.
    let lastCheck: NIOLockedValueBox<Double>
    /// The daemon's clock: history timestamps, pruning and the check's schedule.
    let clock: any DaemonClock
    static let maxPendingHistory = 10_000

    /// Opens (creating, migrating `state.json`, or replacing a damaged file) the database in `directory`.
    /// `snapshot` gives what to write into a new database should this one fail while running;
    /// `report` is told of every failed write (the caller logs and counts it).
    init(directory: String, clock: any DaemonClock = SystemClock(), faults: TestFaults = TestFaults(),
                historyDays: @escaping @Sendable () -> Double = { 90 },
                snapshot: @escaping @Sendable () -> Snapshot, report: @escaping @Sendable (String, any Error) -> Void,
                replaced: @escaping @Sendable (String, any Error) -> Void = { _, _ in },
                recovered: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.replaced = replaced
        self.recovered = recovered
        path = directory + "/state.sqlite"
        self.faults = faults
        self.snapshot = snapshot
        self.report = report
        self.historyDays = historyDays
        self.clock = clock
        lastCheck = NIOLockedValueBox(clock.now())
        db = NIOLockedValueBox(nil)
    }

    /// Opens the database file and reads what it holds; a damaged one is moved aside and a
    /// new one made. Then migrates `state.json` (once) when the database has no state yet.
    /// Never throws: with no usable database at all (the state directory is full or
    /// read-only), `Opening.unavailable` says why, the daemon runs on, and every save tries
    /// to open it again.
    func open() -> Opening {
        var opening = Opening()
        do {
            opening.snapshot = try connectAndLoad()
        } catch where Self.isDamage(error) {
            replaced(moveAside(), error)
            do { opening.snapshot = try connectAndLoad() } catch {
                opening.unavailable = "\(error)"
                return opening
            }
        } catch {
            opening.unavailable = "\(error)"
            return opening
        }
        scheduleCheck()
        let legacy = StateStore(directory: (path as NSString).deletingLastPathComponent)
        if FileManager.default.fileExists(atPath: legacy.path) {
            do {
                if let record = try legacy.load(), opening.snapshot.core == nil {
                    try importLegacy(record)
                    opening.snapshot = try connectAndLoad(reconnect: false)
                    opening.migratedFrom = legacy.path
                }
                rename(legacy.path, legacy.path + ".migrated")
            } catch {
                opening.legacyUnreadable = "\(error)"
                rename(legacy.path, legacy.path + ".unreadable")
            }
        }
        return opening
    }

    func connectAndLoad(reconnect: Bool = true) throws -> Snapshot {
        if reconnect { try db.withLockedValue { $0 = try Self.connect(path) } }
        return Snapshot(core: try loadCore(), records: try loadRecords(), recentEvictions: try loadRecentEvictions())
    }

    /// Connects and checks the file: schema in place, `PRAGMA quick_check` clean.
    static func connect(_ path: String) throws -> (pool: DatabasePool, inode: UInt64) {
        let dir = (path as NSString).deletingLastPathComponent
        if !FileManager.default.fileExists(atPath: dir) {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        var config = Configuration()
        config.label = "kvscrubd-state"
        config.busyMode = .timeout(5)
        let pool = try DatabasePool(path: path, configuration: config)
        do { try pool.read(quickCheck) } catch {
            try? pool.close()
            throw error
        }
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE daemon_state (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    core TEXT NOT NULL,          -- JSON: scrub progress, counters, brake, pending removals, regrets
                    saved_at REAL NOT NULL);
                CREATE TABLE recorded_checksum (
                    name TEXT PRIMARY KEY,
                    device INTEGER NOT NULL, inode INTEGER NOT NULL,
                    text_bytes INTEGER NOT NULL, payload_bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
                    text_crc INTEGER NOT NULL, payload_crc INTEGER NOT NULL,
                    recorded_at REAL NOT NULL);
                CREATE TABLE recent_eviction (name TEXT PRIMARY KEY, at REAL NOT NULL, bytes INTEGER NOT NULL);
                CREATE TABLE history (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    at REAL NOT NULL, action TEXT NOT NULL, file TEXT NOT NULL, bytes INTEGER NOT NULL,
                    cause TEXT NOT NULL, region TEXT, detail TEXT,
                    expected_crc INTEGER, actual_crc INTEGER, destination TEXT);
                CREATE INDEX history_at ON history(at);
                """)
        }
        do { try migrator.migrate(pool) } catch {
            try? pool.close()
            throw error
        }
        var st = stat()
        guard stat(path, &st) == 0 else {
            try? pool.close()
            throw Failure(step: "stat", path: path, underlying: Errno(rawValue: errno))
        }
        return (pool, UInt64(st.st_ino))
    }

    /// SQLite's own check of every page; a failure throws SQLITE_CORRUPT (`isDamage`).
    static func quickCheck(_ db: Database) throws {
        let check = try String.fetchOne(db, sql: "PRAGMA quick_check")
        guard check == "ok" else { throw DatabaseError(resultCode: .SQLITE_CORRUPT, message: "quick_check: \(check ?? "no answer")") }
    }

    /// A read-only connection of its own to the file at `path`.
    static func readOnlyQueue(_ path: String) throws -> DatabaseQueue {
        var config = Configuration()
        config.readonly = true
        config.busyMode = .timeout(5)
        return try DatabaseQueue(path: path, configuration: config)
    }

    /// Closes the live connection, if any.
    func disconnect() {
        db.withLockedValue { current in
            if let c = current { try? c.pool.close() }
            current = nil
        }
    }

    /// Moves a damaged database (and its WAL files) aside. Returns where to.
    func moveAside() -> String {
        disconnect()
        let to = "\(path).damaged.\(Int(clock.now()))"
        for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
            if rename(path + suffix, to + suffix) != 0 { unlink(path + suffix) }
        }
        return to
    }

    func importLegacy(_ r: StateStore.Record) throws {
        let core = Core(scrub: r.scrub, counters: r.counters, brake: r.brake ?? RemovalBrake(),
                        pendingRemovals: r.pendingRemovals ?? [], regretLog: r.regretLog ?? [])
        var p = Pending()
        p.core = core
        for (k, v) in r.recentEvictions ?? [:] { p.evictions[k] = .some(v) }
        try write(p)
    }

}
