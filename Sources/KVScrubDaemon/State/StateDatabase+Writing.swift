import Foundation
import GRDB
import KVCFormat
import KVScrubControl
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Writing the state database: changes merged into one pending batch, written
/// by one serial queue in one transaction, retried after a failure, and the
/// database replaced from memory when it is damaged or gone.
extension StateDatabase {
    /// Changes not yet written: the state row and each record or eviction by name (last
    /// write wins; nil deletes), history appended.
    struct Pending {
        var core: Core?
        var records: [String: RecordedChecksum?] = [:]
        var evictions: [String: EvictionLedger.Eviction?] = [:]
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

    /// Hands changes to the writer; returns at once.
    func enqueue(_ changes: [Change]) {
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
    func close() async {
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
    func drain() {
        let batch = pending.withLockedValue { p -> Pending in
            let b = p
            p = Pending()
            p.retryScheduled = b.retryScheduled
            return b
        }
        guard !batch.isEmpty else { return }
        do {
            try ensureLive()
            try checkIfDue()
            try write(batch)
            if batch.droppedHistory > 0 {
                // Bounded memory while the database could not be written: the oldest history went.
                report("history: \(batch.droppedHistory) events dropped while the state database could not be written",
                       Failure(step: "keep history", path: path, underlying: Errno.noSpace))
            }
            let failed = failures.withLockedValue { f -> Int in
                defer { f = (0, 0) }
                return f.count
            }
            if failed > 0 { recovered(failed) }
        } catch {
            let failure = error
            // The first failure of a run of them, then at most one a minute: a full disk must not flood the journal.
            let now = clock.now()
            let (tell, count) = failures.withLockedValue { f -> (Bool, Int) in
                f.count += 1
                guard f.count == 1 || now - f.lastReport >= 60 else { return (false, f.count) }
                f.lastReport = now
                return (true, f.count)
            }
            if tell { report("save state \(path)" + (count > 1 ? " (\(count) failed attempts so far)" : ""), failure) }
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
    func replaceDamaged(_ failure: any Error, with batch: Pending) -> Bool {
        let to = moveAside()
        replaced(to, failure)
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
    func scheduleCheck() {
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
    func checkIfDue() throws {
        let now = clock.now()
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
        let fresh = try Self.readOnlyQueue(path)
        defer { try? fresh.close() }
        try fresh.read(Self.quickCheck)
    }

    /// The database file still is the one open (not deleted or replaced); else a new one from memory.
    func ensureLive() throws {
        let (open, inode) = db.withLockedValue { ($0 != nil, $0?.inode ?? 0) }
        var st = stat()
        if open && stat(path, &st) == 0 && UInt64(st.st_ino) == inode { return }
        // None open (it could not be opened before): just try again; a failure is reported by the caller.
        if open {
            report("the state database file was deleted or replaced while in use; starting a new one from memory",
                   Failure(step: "check", path: path, underlying: Errno.noSuchFileOrDirectory))
        }
        disconnect()
        try db.withLockedValue { $0 = try Self.connect(path) }
        try write(fullBatch(plus: Pending()))
    }

    func fullBatch(plus batch: Pending) -> Pending {
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
    func write(_ b: Pending) throws {
        let now = clock.now()
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
            faults.reached(.stateWritten)
        }
        faults.reached(.stateCommitted)
    }
}
