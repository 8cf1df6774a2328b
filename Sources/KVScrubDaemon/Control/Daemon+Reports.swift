import CLinux
import Foundation
import KVCFormat
import KVScrubControl
import KVScrubSystemd
import Logging
import NIOPosix
import UnixSignals
#if canImport(Glibc)
import Glibc
#endif

/// What the daemon says about itself: the systemd status line, `status`,
/// `entries`, `explain` and the regret advice.
extension Daemon {
    /// The one line `systemctl status` shows: "1234 files, 3.1 GiB of 4.0 GiB, scrub 42% at 171.7 MiB/s, 0 corrupt".
    func statusLine() -> String {
        state.with { s in
            var line = "\(s.index.count) files, \(ByteText.short(s.totalBytes)) of " + (s.config.budgetMB > 0 ? ByteText.short(s.config.budgetBytes) : "no budget")
            if s.scrub.passStartedAt != nil {
                let total = s.passFilesTotal
                let pct = total > 0 ? s.scrub.filesDone * 100 / total : 100
                line += ", scrub \(pct)% at \(ByteText.short(UInt64(max(0, s.scrubRate))))/s"
            } else {
                line += ", scrub idle"
            }
            line += ", \(s.counters.corruptFound) corrupt"
            if s.brake.engaged { line = "REMOVAL BRAKE ENGAGED: " + line }
            if s.phase != .running { line = s.phase.rawValue + ": " + line }
            return line
        }
    }

    func status() -> StatusReport {
        state.with { s in
            let c = s.config
            let filesTotal = s.index.count
            let bytesTotal = s.totalBytes
            // ETA: scrubbing time still needed, at the rate of the pass so far with paused time
            // left out (or the measured rate, or the limit); a pause does not make it grow.
            var eta: Double? = nil
            let now = state.clock.now()
            if let started = s.scrub.passStartedAt {
                let remaining = s.passBytesLeft
                let active = max(0, now - started - s.pausedSecondsInPass(now: now))
                var rate = active > 1 && s.scrub.bytesDone > 0 ? Double(s.scrub.bytesDone) / active : s.scrubRate
                if c.scrubRateMBps > 0 { rate = rate > 0 ? min(rate, c.scrubRateMBps * 1e6) : c.scrubRateMBps * 1e6 }
                if rate > 0 { eta = Double(remaining) / rate }
            }
            let lastStart = max(s.scrub.lastPass?.startedAt ?? 0, s.scrub.lastCancelledAt ?? 0)
            let nextPass = s.scrub.passStartedAt == nil ? (lastStart > 0 ? lastStart : s.startedAt) + c.scrubIntervalHours * 3600 : nil
            return StatusReport(
                state: s.phase.rawValue, pid: getpid(), version: DaemonVersion.string, uptimeSeconds: s.clock.now() - s.startedAt,
                cacheDir: c.cacheDir, files: filesTotal, bytes: bytesTotal, budgetBytes: c.budgetBytes, freeBytes: s.freeBytes,
                filesystemBytes: s.fsBytes, dryRun: c.dryRun, incompatibleFiles: s.census.incompatible,
                // Between passes nothing is done of the next one (the last pass has its own summary).
                scrub: .init(active: s.scrub.passStartedAt != nil, filesDone: s.scrub.passStartedAt != nil ? s.scrub.filesDone : 0,
                             filesTotal: s.scrub.passStartedAt != nil ? s.passFilesTotal : filesTotal,
                             bytesDone: s.scrub.passStartedAt != nil ? s.scrub.bytesDone : 0, bytesTotal: bytesTotal, rateBytesPerSecond: s.scrubRate, limitMBps: c.scrubRateMBps,
                             etaSeconds: eta, current: s.scrubbing, passStartedAt: s.scrub.passStartedAt, nextPassAt: nextPass,
                             lastPass: s.scrub.lastPass, paused: s.scrub.paused == true, pausedSeconds: s.pausedSecondsInPass(now: now),
                             lastCancelledAt: s.scrub.lastCancelledAt, corruptFound: s.scrub.passStartedAt != nil ? s.scrub.corruptFound : nil),
                counters: s.counters, lastErrors: s.lastErrors, regret: Self.regret(s, now: now),
                engineAbi: s.engineABI, engineAbiSetting: c.engine.description,
                brake: .init(engaged: s.brake.engaged, engagedAt: s.brake.engagedAt, reason: s.brake.reason, heldBack: s.brake.heldBack,
                             limit: c.removalBrake.description, corruptLastHour: s.brake.corruptLastHour(now: now),
                             verifiedLastHour: s.brake.verifiedLastHour(now: now), quarantine: c.brakeQuarantineDir,
                             action: c.removalBrakeAction.rawValue),
                pendingRemovals: s.pendingRemoval.count, settleSeconds: c.removalSettleSeconds,
                checksums: s.checksumProtection,
                generations: Self.generations(&s, now: now),
                supersededGraceHours: c.supersededGraceHours, orphanTempMinutes: c.orphanTempMinutes,
                engineDeletedLastDay: { let d = s.engineDeletions.lastDay(now: now); return .init(files: d.files, bytes: d.bytes) }())
        }
    }

    /// The generations present. The whole census only while some file is of another generation
    /// (it walks the index); otherwise one line for the generation in force, from the totals.
    static func generations(_ s: inout DaemonState.Inner, now: Double) -> [GenerationCensus.Report] {
        guard s.census.incompatible == 0 else {
            return GenerationCensus.take(entries: Array(s.index.values), engine: s.engineABI.generation,
                                         graceSeconds: s.config.supersededGraceHours.map { $0 * 3600 }, now: now)
        }
        guard !s.index.isEmpty else { return [] }
        return [GenerationCensus.Report(key: s.engineABI.generation?.key ?? "-", description: s.engineABI.generation.map { "\($0)" } ?? "not known yet",
                                        files: s.index.count, bytes: s.totalBytes, agentSessions: 0, newestActivity: nil,
                                        inForce: true, reclaimAt: nil, superseded: false)]
    }

    func entries() -> [EntryReport] {
        let now = UInt64(state.clock.now())
        let (all, verdicts, superseded, recorded) = state.with { s in
            (Array(s.index.values), s.verdicts, s.supersededBy, Set(s.index.keys.filter { s.isRecorded($0) == true }))
        }
        return EvictionPlan.order(entries: all, now: now).enumerated().map { i, v in
            let b = EvictionScore.breakdown(v.entry, now: now)
            let h = v.entry.header
            return EntryReport(rank: i + 1, name: v.entry.fileName, version: h?.version, reason: h?.reason.name, tokens: h?.tokens,
                               hits: h?.hits, size: v.entry.fileSize, lastUsed: h?.lastUsed, score: v.score,
                               effectiveHits: b.effectiveHits, idleSeconds: b.idleSeconds, tokensPerByte: b.tokensPerByte,
                               anchorFactor: b.anchorFactor, unusable: v.entry.unusable,
                               superseded: superseded[v.entry.fileName] != nil, verdict: verdicts[v.entry.fileName]?.rawValue,
                               checksums: h.map { $0.version == 2 ? "crc32c" : (recorded.contains(v.entry.fileName) ? "recorded" : "none") })
        }
    }

    /// `explain`: where one file stands in the eviction order, and why.
    func explain(_ arg: String) -> Explanation? {
        var name = (arg as NSString).lastPathComponent
        if !name.hasSuffix(".kv") { name += ".kv" }
        let all = entries()
        // A unique prefix of the sha is enough, as with git.
        let matches = all.filter { $0.name == name || (arg.count >= 4 && $0.name.lowercased().hasPrefix(arg.lowercased())) }
        guard matches.count == 1, let e = matches.first else { return nil }
        let (budget, supersededBy, dryRun) = state.with { ($0.config.budgetBytes, $0.supersededBy[e.name], $0.config.dryRun) }
        let total = all.reduce(UInt64(0)) { $0 + $1.size }
        let before = all.prefix(e.rank - 1).reduce(UInt64(0)) { $0 + $1.size }
        let over = budget > 0 && total > budget ? total - budget : 0
        let evictedNow = over > before
        var why: [String] = []
        if let u = e.unusable {
            why.append("the engine cannot use it (\(u)): it scores 0 and goes before any usable checkpoint")
        } else {
            why.append(String(format: "score %.6g = (decayed hits %.3f + 1) × %.4g tokens per byte", e.score, e.effectiveHits, e.tokensPerByte)
                       + (e.anchorFactor > 1 ? " × \(Int(e.anchorFactor)) (a \(e.reason ?? "?") checkpoint is an anchor)" : ""))
            if let hits = e.hits, let idle = e.idleSeconds {
                why.append(String(format: "%u hits, last used %@ ago: hits halve every 6 h idle, so they count as %.3f now", hits, DurationText.short(Double(idle)), e.effectiveHits))
            }
            if e.reason == "continued" && e.anchorFactor == 1 { why.append("a continued checkpoint is a waypoint, not an anchor: no 2× prior") }
            if let by = supersededBy { why.append("superseded: \(by) extends its text, so the engine's pre-store pass scored it down to 5–50 % when that file arrived") }
        }
        why.append("rank \(e.rank) of \(all.count) in eviction order (1 goes first); \(before) bytes go before it")
        if budget == 0 {
            why.append("no byte budget is set: nothing is evicted for size")
        } else if evictedNow {
            why.append("the cache is \(over) bytes over its budget: this file would be evicted by the next evaluation" + (dryRun ? " (dry run: logged only)" : ""))
        } else {
            why.append("the cache is " + (over > 0 ? "\(over) bytes over" : "\(budget - min(budget, total)) bytes under") + " its budget: \(before + e.size - over) more bytes would have to go before this file's turn")
        }
        return Explanation(entry: e, files: all.count, bytesBefore: before, overBudgetBytes: over, wouldBeEvictedNow: evictedNow, reasons: why)
    }

    /// Regret advice for `status`: evicted checkpoints the engine wrote again within the window.
    static func regret(_ s: DaemonState.Inner, now: Double) -> StatusReport.Regret {
        let day = s.regretLog.filter { now - $0.at <= 86400 }
        // Distinct files: one checkpoint evicted and rewritten five times needed its room once.
        var sizes: [String: UInt64] = [:]
        for r in day { sizes[r.file] = max(sizes[r.file] ?? 0, r.bytes) }
        let bytes = sizes.values.reduce(0, +)
        var advice: String? = nil
        if day.count >= 3 {
            let mib = (bytes + (1 << 20) - 1) >> 20
            advice = "the budget is too small: \(day.count) regrets in the last day (evicted checkpoints the engine wrote again within \(DurationText.short(s.config.regretWindowHours * 3600))); about \(mib) MiB more budget would have kept them"
        }
        return StatusReport.Regret(windowHours: s.config.regretWindowHours, lastDay: day.count, lastDayBytes: bytes,
                                   total: s.counters.regrets ?? 0, advice: advice)
    }
}
