import Foundation
import GRDB
import KVCFormat
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
    /// The persisted part of `DaemonState.Inner`.
    public struct Core: Codable, Sendable, Equatable {
        public var scrub: DaemonState.ScrubProgress
        public var counters: DaemonState.Counters
        public var brake: RemovalBrake
        public var pendingRemovals: [String]
        public var regretLog: [DaemonState.RegretRecord]

        public init(scrub: DaemonState.ScrubProgress, counters: DaemonState.Counters, brake: RemovalBrake,
                    pendingRemovals: [String], regretLog: [DaemonState.RegretRecord]) {
            self.scrub = scrub
            self.counters = counters
            self.brake = brake
            self.pendingRemovals = pendingRemovals
            self.regretLog = regretLog
        }
    }

    /// Everything the daemon can write again from memory into a new database.
    public struct Snapshot: Sendable {
        public var core: Core?
        public var records: [String: RecordedChecksum] = [:]
        public var recentEvictions: [String: DaemonState.EvictionRecord] = [:]
        public init(core: Core? = nil, records: [String: RecordedChecksum] = [:], recentEvictions: [String: DaemonState.EvictionRecord] = [:]) {
            self.core = core
            self.records = records
            self.recentEvictions = recentEvictions
        }
    }

    /// One change to persist.
    public enum Change: Sendable {
        case core(Core)
        case record(String, RecordedChecksum?)
        case eviction(String, DaemonState.EvictionRecord?)
        case history(HistoryEvent)
    }

    /// Why the database could not be used, with the step and SQLite's word on it.
    public struct Failure: Error, CustomStringConvertible {
        public let step: String
        public let path: String
        public let underlying: any Error
        public var description: String { "\(step) \(path): \(underlying)" }
    }

    /// What `open` found, for the start-up log.
    public struct Opening: Sendable {
        /// What the database held (empty for a new one).
        public var snapshot = Snapshot()
        /// Why no database could be opened at all (the daemon runs on; saves try again).
        public var unavailable: String?
        public var migratedFrom: String?
        public var legacyUnreadable: String?
        /// The damaged database moved aside, and why.
        public var movedAside: (to: String, why: String)?
    }

    private struct Pending {
        var core: Core?
        var records: [String: RecordedChecksum?] = [:]
        var evictions: [String: DaemonState.EvictionRecord?] = [:]
        var history: [HistoryEvent] = []
        var droppedHistory = 0
        var scheduled = false
        var retryScheduled = false
        var isEmpty: Bool { core == nil && records.isEmpty && evictions.isEmpty && history.isEmpty }

        mutating func merge(_ c: Change, historyLimit: Int) {
            switch c {
            case .core(let v): core = v
            case .record(let n, let r): records[n] = .some(r)
            case .eviction(let n, let e): evictions[n] = .some(e)
            case .history(let h):
                history.append(h)
                if history.count > historyLimit {
                    droppedHistory += history.count - historyLimit
                    history.removeFirst(history.count - historyLimit)
                }
            }
        }

        /// Puts a failed batch back under what arrived since (newer wins).
        mutating func mergeBack(_ old: Pending, historyLimit: Int) {
            if core == nil { core = old.core }
            for (k, v) in old.records where records[k] == nil { records[k] = .some(v) }
            for (k, v) in old.evictions where evictions[k] == nil { evictions[k] = .some(v) }
            history = old.history + history
            droppedHistory += old.droppedHistory
            if history.count > historyLimit {
                droppedHistory += history.count - historyLimit
                history.removeFirst(history.count - historyLimit)
            }
        }
    }

    public let path: String
    /// The live database and the inode it was opened on (a replaced or deleted file is noticed).
    private let db: NIOLockedValueBox<(pool: DatabasePool, inode: UInt64)?>
    private let pending = NIOLockedValueBox(Pending())
    private let writer = DispatchQueue(label: "kvscrubd-state-db")
    private let snapshot: @Sendable () -> Snapshot
    private let report: @Sendable (String, any Error) -> Void
    private let faults: TestFaults
    private let historyDays: @Sendable () -> Double
    private let lastPrune = NIOLockedValueBox(0.0)
    /// When the file was last checked (`PRAGMA quick_check`): damage under a live connection
    /// shows only when a page is read, and the daemon mostly writes.
    private let lastCheck = NIOLockedValueBox(Date().timeIntervalSince1970)
    static let maxPendingHistory = 10_000

    /// Opens (creating, migrating `state.json`, or replacing a damaged file) the database in `directory`.
    /// `snapshot` gives what to write into a new database should this one fail while running;
    /// `report` is told of every failed write (the caller logs and counts it).
    public init(directory: String, faults: TestFaults = TestFaults(), historyDays: @escaping @Sendable () -> Double = { 90 },
                snapshot: @escaping @Sendable () -> Snapshot, report: @escaping @Sendable (String, any Error) -> Void) {
        path = directory + "/state.sqlite"
        self.faults = faults
        self.snapshot = snapshot
        self.report = report
        self.historyDays = historyDays
        db = NIOLockedValueBox(nil)
    }

    /// Opens the database file and reads what it holds; a damaged one is moved aside and a
    /// new one made. Then migrates `state.json` (once) when the database has no state yet.
    /// Never throws: with no usable database at all (the state directory is full or
    /// read-only), `Opening.unavailable` says why, the daemon runs on, and every save tries
    /// to open it again.
    public func open() -> Opening {
        var opening = Opening()
        do {
            opening.snapshot = try connectAndLoad()
        } catch where Self.isDamage(error) {
            opening.movedAside = (moveAside(), "\(error)")
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

    private func connectAndLoad(reconnect: Bool = true) throws -> Snapshot {
        if reconnect { try db.withLockedValue { $0 = try Self.connect(path) } }
        return Snapshot(core: try loadCore(), records: try loadRecords(), recentEvictions: try loadRecentEvictions())
    }

    /// Connects and checks the file: schema in place, `PRAGMA quick_check` clean.
    private static func connect(_ path: String) throws -> (pool: DatabasePool, inode: UInt64) {
        let dir = (path as NSString).deletingLastPathComponent
        if !FileManager.default.fileExists(atPath: dir) {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        var config = Configuration()
        config.label = "kvscrubd-state"
        config.busyMode = .timeout(5)
        let pool = try DatabasePool(path: path, configuration: config)
        let check = try pool.read { db in try String.fetchOne(db, sql: "PRAGMA quick_check") }
        guard check == "ok" else {
            try? pool.close()
            throw DatabaseError(resultCode: .SQLITE_CORRUPT, message: "quick_check: \(check ?? "no answer")")
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

    /// Moves a damaged database (and its WAL files) aside. Returns where to.
    private func moveAside() -> String {
        db.withLockedValue { current in
            if let c = current { try? c.pool.close() }
            current = nil
        }
        let to = "\(path).damaged.\(Int(Date().timeIntervalSince1970))"
        for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
            if rename(path + suffix, to + suffix) != 0 { unlink(path + suffix) }
        }
        return to
    }

    private func importLegacy(_ r: StateStore.Record) throws {
        let core = Core(scrub: r.scrub, counters: r.counters, brake: r.brake ?? RemovalBrake(),
                        pendingRemovals: r.pendingRemovals ?? [], regretLog: r.regretLog ?? [])
        var p = Pending()
        p.core = core
        for (k, v) in r.recentEvictions ?? [:] { p.evictions[k] = .some(v) }
        try write(p)
    }

    // MARK: Reading (start-up, `history`, `verify --recorded`)

    private func pool() throws -> DatabasePool {
        guard let p = db.withLockedValue({ $0?.pool }) else {
            throw Failure(step: "use", path: path, underlying: DatabaseError(resultCode: .SQLITE_MISUSE, message: "the database is not open"))
        }
        return p
    }

    public func loadCore() throws -> Core? {
        try pool().read { db in
            guard let json = try String.fetchOne(db, sql: "SELECT core FROM daemon_state WHERE id = 1") else { return nil }
            return try JSONDecoder().decode(Core.self, from: Data(json.utf8))
        }
    }

    public func loadRecords() throws -> [String: RecordedChecksum] {
        try pool().read { db in
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
    }

    public func loadRecentEvictions() throws -> [String: DaemonState.EvictionRecord] {
        try pool().read { db in
            var out: [String: DaemonState.EvictionRecord] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT name, at, bytes FROM recent_eviction") {
                out[row["name"]] = DaemonState.EvictionRecord(at: row["at"], bytes: UInt64(bitPattern: row["bytes"]))
            }
            return out
        }
    }

    /// History, newest first.
    public func history(since: Double? = nil, cause: String? = nil, action: String? = nil, limit: Int = 1000) throws -> [HistoryEvent] {
        try pool().read { db in
            var sql = "SELECT * FROM history WHERE at >= ?"
            var args: [any DatabaseValueConvertible] = [since ?? 0]
            if let cause { sql += " AND cause = ?"; args.append(cause) }
            if let action { sql += " AND action = ?"; args.append(action) }
            sql += " ORDER BY id DESC LIMIT ?"
            args.append(max(0, limit))
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map(HistoryEvent.init(row:))
        }
    }

    /// Opens a database read-only, for a process other than the daemon (`verify --recorded`, tests).
    public static func readOnly(directory: String) throws -> ReadOnly {
        let path = directory + "/state.sqlite"
        guard FileManager.default.fileExists(atPath: path) else {
            throw Failure(step: "open", path: path, underlying: Errno.noSuchFileOrDirectory)
        }
        var config = Configuration()
        config.readonly = true
        config.busyMode = .timeout(5)
        return ReadOnly(queue: try DatabaseQueue(path: path, configuration: config))
    }

    /// A read-only view of a database another process writes.
    public struct ReadOnly: Sendable {
        let queue: DatabaseQueue

        public func records() throws -> [String: RecordedChecksum] {
            try queue.read { db in
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
        }

        public func core() throws -> Core? {
            try queue.read { db in
                guard let json = try String.fetchOne(db, sql: "SELECT core FROM daemon_state WHERE id = 1") else { return nil }
                return try JSONDecoder().decode(Core.self, from: Data(json.utf8))
            }
        }

        public func historyCount() throws -> Int {
            try queue.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM history") ?? 0 }
        }
    }

    // MARK: Writing

    /// Hands changes to the writer; returns at once.
    public func enqueue(_ changes: [Change]) {
        guard !changes.isEmpty else { return }
        let schedule = pending.withLockedValue { p -> Bool in
            for c in changes { p.merge(c, historyLimit: Self.maxPendingHistory) }
            guard !p.scheduled else { return false }
            p.scheduled = true
            return true
        }
        if schedule { writer.async { self.drain() } }
    }

    /// Writes what is pending, then closes the database: SQLite checkpoints the
    /// write-ahead log into the file and removes it, so a stopped daemon leaves one
    /// self-contained `state.sqlite`. For shutdown; later writes open it again.
    public func close() async {
        await withCheckedContinuation { (k: CheckedContinuation<Void, Never>) in
            writer.async {
                self.drain()
                self.db.withLockedValue { c in
                    if let p = c?.pool {
                        do {
                            _ = try p.writeWithoutTransaction { try $0.checkpoint(.truncate) }
                            try p.close()
                        } catch { self.report("close the state database \(self.path)", error) }
                    }
                    c = nil
                }
                k.resume()
            }
        }
    }

    /// Writes the pending batch, on the writer queue.
    private func drain() {
        var batch = pending.withLockedValue { p -> Pending in
            let b = p
            p = Pending()
            p.retryScheduled = b.retryScheduled
            return b
        }
        guard !batch.isEmpty else { return }
        batch.scheduled = false
        do {
            try ensureLive()
            try checkIfDue()
            try write(batch)
        } catch {
            let failure = error
            report("save state \(path)", failure)
            if Self.isDamage(failure) && replaceDamaged(failure, with: batch) { return }
            let retry = pending.withLockedValue { p -> Bool in
                p.mergeBack(batch, historyLimit: Self.maxPendingHistory)
                guard !p.retryScheduled else { return false }
                p.retryScheduled = true
                return true
            }
            if retry {
                writer.asyncAfter(deadline: .now() + 5) {
                    self.pending.withLockedValue { $0.retryScheduled = false }
                    self.drain()
                }
            }
        }
    }

    /// An unusable file: moved aside, and a new database written with everything memory
    /// holds (and `batch`). Returns whether the new one took it.
    private func replaceDamaged(_ failure: any Error, with batch: Pending) -> Bool {
        let to = moveAside()
        report("the state database was damaged and moved to \(to); starting a new one", failure)
        do {
            try db.withLockedValue { $0 = try Self.connect(path) }
            try write(fullBatch(plus: batch))
            return true
        } catch {
            report("save state \(path)", error)
            return false
        }
    }

    /// Checks the database every minute even when nothing is written (on the writer's queue).
    private func scheduleCheck() {
        let every = faults.databaseCheckSeconds ?? 60
        writer.asyncAfter(deadline: .now() + every) {
            do { try self.checkIfDue() } catch where Self.isDamage(error) {
                _ = self.replaceDamaged(error, with: Pending())
            } catch {
                self.report("check the state database \(self.path)", error)
            }
            self.scheduleCheck()
        }
    }

    /// Every minute (before a write, and on a timer): SQLite's own check of every page. Throws SQLITE_CORRUPT
    /// when it fails, which moves the file aside and starts a new one from memory.
    private func checkIfDue() throws {
        let now = Date().timeIntervalSince1970
        let every = faults.databaseCheckSeconds ?? 60
        let due = lastCheck.withLockedValue { last -> Bool in
            guard now - last >= every else { return false }
            last = now
            return true
        }
        // Gone altogether: the next write notices (`ensureLive`) and writes a new one.
        guard due, FileManager.default.fileExists(atPath: path) else { return }
        // A connection of its own: the pool's connections trust their page caches, which
        // bytes written under them by someone else do not invalidate.
        var config = Configuration()
        config.readonly = true
        config.busyMode = .timeout(5)
        let fresh = try DatabaseQueue(path: path, configuration: config)
        defer { try? fresh.close() }
        let check = try fresh.read { db in try String.fetchOne(db, sql: "PRAGMA quick_check") }
        guard check == "ok" else {
            throw DatabaseError(resultCode: .SQLITE_CORRUPT, message: "quick_check: \(check ?? "no answer")")
        }
    }

    /// The database file still is the one open (not deleted or replaced); else a new one from memory.
    private func ensureLive() throws {
        let (open, inode) = db.withLockedValue { ($0 != nil, $0?.inode ?? 0) }
        var st = stat()
        if open && stat(path, &st) == 0 && UInt64(st.st_ino) == inode { return }
        let why = open ? "the database file was deleted or replaced while in use" : "no database was open"
        report("state database: \(why); starting a new one from memory", Failure(step: "check", path: path, underlying: Errno.noSuchFileOrDirectory))
        db.withLockedValue { c in
            if let p = c?.pool { try? p.close() }
            c = nil
        }
        try db.withLockedValue { $0 = try Self.connect(path) }
        try write(fullBatch(plus: Pending()))
    }

    private func fullBatch(plus batch: Pending) -> Pending {
        let s = snapshot()
        var full = Pending()
        full.core = s.core
        for (k, v) in s.records { full.records[k] = .some(v) }
        for (k, v) in s.recentEvictions { full.evictions[k] = .some(v) }
        full.mergeBack(batch, historyLimit: Self.maxPendingHistory)
        if let c = batch.core { full.core = c }
        return full
    }

    /// SQLite's codes for a file that cannot be used as a database any more.
    static func isDamage(_ error: any Error) -> Bool {
        guard let e = error as? DatabaseError else { return false }
        return e.resultCode == .SQLITE_CORRUPT || e.resultCode == .SQLITE_NOTADB
    }

    /// One transaction for a batch.
    private func write(_ b: Pending) throws {
        let now = Date().timeIntervalSince1970
        let prune: Bool = lastPrune.withLockedValue { last in
            guard now - last >= 3600 else { return false }
            last = now
            return true
        }
        let keepHistory = historyDays() * 86400
        try pool().write { db in
            if faults.stateWriteFails() {
                throw DatabaseError(resultCode: .SQLITE_IOERR, message: "disk I/O error (injected fault: Input/output error)")
            }
            if let core = b.core {
                let enc = JSONEncoder()
                enc.outputFormatting = [.sortedKeys]
                let json = String(decoding: try enc.encode(core), as: UTF8.self)
                try db.execute(sql: "INSERT INTO daemon_state (id, core, saved_at) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET core = excluded.core, saved_at = excluded.saved_at",
                               arguments: [json, now])
            }
            for (name, r) in b.records {
                if let r {
                    try db.execute(sql: """
                        INSERT OR REPLACE INTO recorded_checksum
                        (name, device, inode, text_bytes, payload_bytes, created_at, text_crc, payload_crc, recorded_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """, arguments: [name, Int64(bitPattern: r.key.device), Int64(bitPattern: r.key.inode), Int64(r.key.textBytes),
                                         Int64(bitPattern: r.key.payloadBytes), Int64(bitPattern: r.key.createdAt),
                                         Int64(r.textCRC), Int64(r.payloadCRC), r.recordedAt])
                } else {
                    try db.execute(sql: "DELETE FROM recorded_checksum WHERE name = ?", arguments: [name])
                }
            }
            for (name, e) in b.evictions {
                if let e {
                    try db.execute(sql: "INSERT OR REPLACE INTO recent_eviction (name, at, bytes) VALUES (?, ?, ?)",
                                   arguments: [name, e.at, Int64(bitPattern: e.bytes)])
                } else {
                    try db.execute(sql: "DELETE FROM recent_eviction WHERE name = ?", arguments: [name])
                }
            }
            for h in b.history { try h.insert(db) }
            if prune {
                try db.execute(sql: "DELETE FROM history WHERE at < ?", arguments: [now - keepHistory])
                try db.execute(sql: "DELETE FROM recent_eviction WHERE at < ?", arguments: [now - 7 * 86400])
            }
            faults.reached("state-written")
        }
        faults.reached("state-committed")
    }
}
