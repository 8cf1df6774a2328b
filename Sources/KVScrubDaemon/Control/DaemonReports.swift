import Foundation
import KVCFormat
import KVScrubControl
#if canImport(Glibc)
import Glibc
#endif

/// What the daemon says about itself: the systemd status line, `status`,
/// `entries`, `explain`, the regret advice and the metrics. Each reads the
/// parts' states in the lock order of `PartState` (the index, the scrub, the
/// counters), all at once where one reply shows them side by side, so a
/// reply never shows a change without its count. It changes nothing but the
/// index's walk, which a count of what a pass has left may build.
struct DaemonReports: Sendable {
    let settings: DaemonSettings
    let index: PartState<IndexState>
    let scrub: PartState<ScrubState>
    let counts: PartState<CounterState>
    let metrics: DaemonMetrics

    var clock: any DaemonClock { settings.clock }

    /// Where the daemon is in its life, as `status` shows it: the cache directory gone is the maintainer's to say.
    func phase() -> String {
        let phase = settings.phase
        if phase == .running && !index.read(\.watching) { return DaemonSettings.Phase.waitingForDirectory.rawValue }
        return phase.rawValue
    }

    /// The one line `systemctl status` shows: "1234 files, 3.1 GiB of 4.0 GiB, scrub 42% at 171.7 MiB/s, 0 corrupt".
    func statusLine() -> String {
        let c = settings.config, phase = phase()
        return index.change { i in
            scrub.read { s in
                counts.read { n in
                    var line = "\(i.index.count) files, \(ByteText.short(i.index.totalBytes)) of " + (c.budgetMB > 0 ? ByteText.short(c.budgetBytes) : "no budget")
                    if let pass = s.progress.passStartedAt {
                        let total = s.progress.filesDone + i.index.passLeft(pass, cursor: s.progress.cursor).files
                        let pct = total > 0 ? s.progress.filesDone * 100 / total : 100
                        line += ", scrub \(pct)% at \(ByteText.short(UInt64(max(0, s.rate))))/s"
                    } else {
                        line += ", scrub idle"
                    }
                    line += ", \(n.counters.corruptFound) corrupt"
                    if s.brake.engaged { line = "REMOVAL BRAKE ENGAGED: " + line }
                    if phase != DaemonSettings.Phase.running.rawValue { line = phase + ": " + line }
                    return line
                }
            }
        }
    }

    func status() -> StatusReport {
        let c = settings.config, phase = phase(), startedAt = settings.startedAt
        let now = clock.now()
        return index.change { i in
            scrub.read { s in
                counts.read { n in
                    let filesTotal = i.index.count
                    let bytesTotal = i.index.totalBytes
                    let pass = s.progress.passStartedAt
                    let left = i.index.passLeft(pass, cursor: s.progress.cursor)
                    // ETA: scrubbing time still needed, at the rate of the pass so far with paused time
                    // left out (or the measured rate, or the limit); a pause does not make it grow.
                    var eta: Double? = nil
                    if let started = pass {
                        let active = max(0, now - started - s.pausedSecondsInPass(now: now))
                        var rate = active > 1 && s.progress.bytesDone > 0 ? Double(s.progress.bytesDone) / active : s.rate
                        if c.scrubRateMBps > 0 { rate = rate > 0 ? min(rate, c.scrubRateMBps * 1e6) : c.scrubRateMBps * 1e6 }
                        if rate > 0 { eta = Double(left.bytes) / rate }
                    }
                    let lastStart = max(s.progress.lastPass?.startedAt ?? 0, s.progress.lastCancelledAt ?? 0)
                    let nextPass = pass == nil ? (lastStart > 0 ? lastStart : startedAt) + c.scrubIntervalHours * 3600 : nil
                    let p = s.progress
                    return StatusReport(
                        state: phase, pid: getpid(), version: DaemonVersion.string, uptimeSeconds: now - startedAt,
                        cacheDir: c.cacheDir, files: filesTotal, bytes: bytesTotal, budgetBytes: c.budgetBytes, freeBytes: i.freeBytes,
                        filesystemBytes: i.fsBytes, dryRun: c.dryRun, incompatibleFiles: i.index.census.incompatible,
                        // Between passes nothing is done of the next one (the last pass has its own summary).
                        scrub: .init(active: pass != nil, filesDone: pass != nil ? p.filesDone : 0,
                                     filesTotal: pass != nil ? p.filesDone + left.files : filesTotal,
                                     bytesDone: pass != nil ? p.bytesDone : 0, bytesTotal: bytesTotal, rateBytesPerSecond: s.rate, limitMBps: c.scrubRateMBps,
                                     etaSeconds: eta, current: s.current, passStartedAt: pass, nextPassAt: nextPass,
                                     lastPass: p.lastPass, paused: p.paused == true, pausedSeconds: s.pausedSecondsInPass(now: now),
                                     lastCancelledAt: p.lastCancelledAt, corruptFound: pass != nil ? p.corruptFound : nil),
                        counters: n.counters, lastErrors: n.lastErrors, regret: Self.regret(i.ledger, total: n.counters.regrets ?? 0, config: c, now: now),
                        engineAbi: i.index.engineABI, engineAbiSetting: c.engine.description,
                        brake: .init(engaged: s.brake.engaged, engagedAt: s.brake.engagedAt, reason: s.brake.reason, heldBack: s.brake.heldBack,
                                     limit: c.removalBrake.description, corruptLastHour: s.brake.corruptLastHour(now: now),
                                     verifiedLastHour: s.brake.verifiedLastHour(now: now), quarantine: c.brakeQuarantineDir,
                                     action: c.removalBrakeAction.rawValue),
                        pendingRemovals: s.pendingRemoval.count, settleSeconds: c.removalSettleSeconds,
                        checksums: i.index.checksumProtection,
                        generations: Self.generations(i.index, config: c, now: now),
                        supersededGraceHours: c.supersededGraceHours, orphanTempMinutes: c.orphanTempMinutes,
                        engineDeletedLastDay: { let d = n.engineDeletions.lastDay(now: now); return .init(files: d.files, bytes: d.bytes) }())
                }
            }
        }
    }

    /// The Prometheus exposition of the parts' states now.
    func renderMetrics() -> String {
        metrics.render(settings: settings, index: index, scrub: scrub, counts: counts)
    }

    /// The generations present. The whole census only while some file is of another generation
    /// (it walks the index); otherwise one line for the generation in force, from the totals.
    static func generations(_ index: CacheIndex, config: DaemonConfig, now: Double) -> [GenerationCensus.Report] {
        guard index.census.incompatible == 0 else {
            return GenerationCensus.take(entries: Array(index.entries.values), engine: index.engineABI.generation,
                                         graceSeconds: config.supersededGraceHours.map { $0 * 3600 }, now: now)
        }
        guard !index.isEmpty else { return [] }
        return [GenerationCensus.Report(key: index.engineABI.generation?.key ?? "-", description: index.engineABI.generation.map { "\($0)" } ?? "not known yet",
                                        files: index.count, bytes: index.totalBytes, agentSessions: 0, newestActivity: nil,
                                        inForce: true, reclaimAt: nil, superseded: false)]
    }

    func entries() -> [EntryReport] {
        let now = UInt64(clock.now())
        let (all, verdicts, superseded, recorded) = index.read { s in
            (Array(s.index.entries.values), s.index.verdicts, s.index.supersededBy, Set(s.index.entries.keys.filter { s.index.isRecorded($0) == true }))
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
        let config = settings.config
        let (budget, supersededBy, dryRun) = (config.budgetBytes, index.read { $0.index.supersededBy[e.name] }, config.dryRun)
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
    static func regret(_ ledger: EvictionLedger, total: UInt64, config: DaemonConfig, now: Double) -> StatusReport.Regret {
        let day = ledger.regretsLastDay(now: now)
        // Distinct files: one checkpoint evicted and rewritten five times needed its room once.
        var sizes: [String: UInt64] = [:]
        for r in day { sizes[r.file] = max(sizes[r.file] ?? 0, r.bytes) }
        let bytes = sizes.values.reduce(0, +)
        var advice: String? = nil
        if day.count >= 3 {
            let mib = (bytes + (1 << 20) - 1) >> 20
            advice = "the budget is too small: \(day.count) regrets in the last day (evicted checkpoints the engine wrote again within \(DurationText.short(config.regretWindowHours * 3600))); about \(mib) MiB more budget would have kept them"
        }
        return StatusReport.Regret(windowHours: config.regretWindowHours, lastDay: day.count, lastDayBytes: bytes,
                                   total: total, advice: advice)
    }
}
