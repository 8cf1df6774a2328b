import Foundation
import KVCFormat
import KVScrubControl
import Prometheus
import NIOConcurrencyHelpers

/// The daemon's Prometheus metrics, on a swift-prometheus registry of our own.
///
/// Straight on the registry rather than through swift-metrics: Prometheus
/// wants a `# HELP` line for every family (promtool checks it), and only the
/// registry's own API carries help text; swift-metrics' factory registers
/// every metric with an empty one.
///
/// The daemon's counters already live in the event recorder's `CounterState` (several persist in
/// the state database so they go on after a restart), so the metrics are
/// brought up to date from one state snapshot at each scrape: counters
/// advance by what the state gained since the last scrape (they start at the
/// persisted totals, and never go backwards), gauges are set. Nothing is
/// counted twice and the hot paths (inotify, scrub reads) never touch a metric.
final class DaemonMetrics: Sendable {
    private let registry = PrometheusCollectorRegistry()
    /// Each counter's value as last exported, keyed by name and labels.
    private let exported = NIOLockedValueBox<[String: Int64]>([:])
    private let counters = NIOLockedValueBox<[String: Prometheus.Counter]>([:])
    private let gauges = NIOLockedValueBox<[String: Prometheus.Gauge]>([:])
    static let regions = Region.allCases.map(\.rawValue) + ["unknown"]
    static let causes = ["budget", "free-space", "incompatible"]
    static let abiSources = ["configured", "newest checkpoint", "latest arrival", "none yet"]

    /// The `# HELP` text of every family; a family missing here is a programming error.
    static let help: [String: String] = [
        "kvscrubd_build_info": "kvscrubd's version, as a label; always 1.",
        "kvscrubd_start_time_seconds": "When this daemon process started, Unix time.",
        "kvscrubd_files": "Checkpoints in the cache, by last scrub verdict and format version.",
        "kvscrubd_bytes": "Bytes of checkpoints in the cache, by last scrub verdict and format version.",
        "kvscrubd_budget_bytes": "The byte budget of the cache (budget_mb); 0 when none is set.",
        "kvscrubd_filesystem_free_bytes": "Bytes free to unprivileged users on the cache's file system.",
        "kvscrubd_filesystem_size_bytes": "Size of the cache's file system in bytes.",
        "kvscrubd_scrub_rate_bytes_per_second": "Bytes per second the scrub is reading now; 0 when idle or paused.",
        "kvscrubd_scrub_rate_limit_bytes_per_second": "The scrub's rate limit in bytes per second (scrub_rate_mb_per_s); 0 when unlimited.",
        "kvscrubd_scrub_interval_seconds": "Every checkpoint is scrubbed at least once per this interval (scrub_interval_hours).",
        "kvscrubd_scrub_last_pass_end_time_seconds": "When the last complete scrub pass ended, Unix time; 0 before the first.",
        "kvscrubd_scrub_paused": "1 while scrubbing is paused (kvscrubd scrub pause), else 0.",
        "kvscrubd_scrub_pass_files_done": "Files the scrub pass in progress has verified; 0 between passes.",
        "kvscrubd_scrub_pass_files": "Files in the scrub pass in progress (done and still to do); 0 between passes.",
        "kvscrubd_regrets_last_day": "Evicted checkpoints the engine wrote again within the regret window, over the last day.",
        "kvscrubd_engine_payload_abi": "The payload ABI of the engine in force; -1 while unknown.",
        "kvscrubd_engine_payload_version": "The DSV4 payload version of the engine generation in force; -1 while unknown.",
        "kvscrubd_engine_file_version": "The newest KVC file version the engine in force reads (1, or 2 with PR #146); -1 while unknown.",
        "kvscrubd_engine_payload_abi_source": "How the payload ABI in force was chosen: 1 for the way in use.",
        "kvscrubd_removal_brake_engaged": "1 while the removal brake holds corrupt files back (kept in place, or in quarantine) instead of removing them.",
        "kvscrubd_removal_brake_held_back_files": "Corrupt files the removal brake has held back since it engaged.",
        "kvscrubd_corrupt_pending_removal_files": "Files found corrupt waiting for the removal rule's second look.",
        "kvscrubd_checksum_protected_files": "Checkpoints by what protects their contents: file (v2 CRC32C), recorded (v1, kvscrubd's record), none (v1, not yet).",
        "kvscrubd_evictions_total": "Checkpoints evicted, by cause (superseded: a superseded engine generation reclaimed).",
        "kvscrubd_orphan_temporaries_removed_total": "Temporary files an engine left behind (a store killed half way) removed.",
        "kvscrubd_orphan_temporary_bytes_removed_total": "Bytes of the temporary files an engine left behind, removed.",
        "kvscrubd_engine_deleted_total": "Checkpoints the engine deleted itself (its eviction, a failed restore, a replaced file), this run.",
        "kvscrubd_engine_deleted_bytes_total": "Bytes of the checkpoints the engine deleted itself, this run.",
        "kvscrubd_evicted_bytes_total": "Bytes of checkpoints evicted.",
        "kvscrubd_corrupt_found_total": "Checkpoints proven corrupt, by the region of the first damage.",
        "kvscrubd_corrupt_removed_total": "Corrupt checkpoints removed or quarantined, by region.",
        "kvscrubd_scrub_bytes_total": "Bytes read by the scrub.",
        "kvscrubd_scrub_passes_total": "Complete scrub passes.",
        "kvscrubd_inotify_events_total": "inotify events handled since the daemon started.",
        "kvscrubd_rescans_total": "Full rescans of the cache directory (inotify overflow, the directory's return) since the daemon started.",
        "kvscrubd_errors_total": "Errors since the daemon started (see kvscrubd status and the journal).",
        "kvscrubd_regrets_total": "Evicted checkpoints the engine wrote again within the regret window.",
    ]

    init() {}

    private func key(_ name: String, _ labels: [(String, String)]) -> String {
        name + labels.map { "|\($0.0)=\($0.1)" }.joined()
    }

    /// The metric made once per name and labels.
    private static func cached<M: Sendable>(_ table: borrowing NIOLockedValueBox<[String: M]>, _ k: String, make: () -> M) -> M {
        table.withLockedValue { m in
            if let existing = m[k] { return existing }
            let made = make()
            m[k] = made
            return made
        }
    }

    /// The whole name (our names carry their unit already) and its help text.
    private func descriptor(_ name: String) -> MetricNameDescriptor {
        guard let h = Self.help[name] else { preconditionFailure("metric \(name) has no help text in DaemonMetrics.help") }
        return MetricNameDescriptor(metricName: name, unitName: "", helpText: h)
    }

    private func counter(_ name: String, _ labels: [(String, String)] = [], to value: UInt64) {
        let k = key(name, labels)
        let c = Self.cached(counters, k) { registry.makeCounter(descriptor: descriptor(name), labels: labels) }
        let target = Int64(clamping: value)
        let delta = exported.withLockedValue { e -> Int64 in
            let d = target - (e[k] ?? 0)
            if d > 0 { e[k] = target }
            return d
        }
        if delta > 0 { c.increment(by: delta) }
    }

    private func gauge(_ name: String, _ labels: [(String, String)] = [], _ value: Double) {
        Self.cached(gauges, key(name, labels)) { registry.makeGauge(descriptor: descriptor(name), labels: labels) }.set(value)
    }

    /// The text exposition of the current state.
    func render(settings: DaemonSettings, index: PartState<IndexState>, scrub: PartState<ScrubState>,
                       counts: PartState<CounterState>) -> String {
        struct Snapshot {
            var census: IndexCensus
            var counters: DaemonCounters
            var free: UInt64?
            var fsBytes: UInt64?
            var rate: Double
            var lastPassEnd: Double?
            var paused: Bool
            var passActive: Bool
            var passDone: Int
            var passTotal: Int
            var regretsLastDay: Int
            var engineABI: EngineABI.Resolution
            var brake: RemovalBrake
            var pending: Int
        }
        let now = settings.clock.now()
        let config = settings.config
        // Under the parts' locks (in their order) only what is read in constant time: the census is kept
        // up to date by the index itself, not counted here (issue #21: 28 ms a scrape at 100,000 files during a pass).
        let snap = index.change { i in
            scrub.read { s in
                counts.read { c -> Snapshot in
                    let left = i.index.passLeft(s.progress.passStartedAt, cursor: s.progress.cursor)
                    return Snapshot(census: i.index.census, counters: c.counters, free: i.freeBytes, fsBytes: i.fsBytes,
                                    rate: s.rate, lastPassEnd: s.progress.lastPass?.endedAt,
                                    paused: s.progress.paused == true, passActive: s.passActive, passDone: s.progress.filesDone,
                                    passTotal: s.progress.filesDone + left.files,
                                    regretsLastDay: i.ledger.regretsLastDay(now: now).count,
                                    engineABI: i.index.engineABI, brake: s.brake, pending: s.pendingRemoval.count)
                }
            }
        }
        for (vi, v) in IndexCensus.verdictLabels.enumerated() {
            for (wi, ver) in IndexCensus.versionLabels.enumerated() {
                let f = snap.census.files(verdict: vi, version: wi)
                gauge("kvscrubd_files", [("verdict", v), ("version", ver)], Double(f.count))
                gauge("kvscrubd_bytes", [("verdict", v), ("version", ver)], Double(f.bytes))
            }
        }
        gauge("kvscrubd_build_info", [("version", DaemonVersion.string)], 1)
        gauge("kvscrubd_start_time_seconds", [], settings.startedAt)
        gauge("kvscrubd_scrub_interval_seconds", [], config.scrubIntervalHours * 3600)
        gauge("kvscrubd_budget_bytes", [], Double(config.budgetBytes))
        if let f = snap.free { gauge("kvscrubd_filesystem_free_bytes", [], Double(f)) }
        if let f = snap.fsBytes { gauge("kvscrubd_filesystem_size_bytes", [], Double(f)) }
        gauge("kvscrubd_scrub_rate_bytes_per_second", [], snap.rate)
        gauge("kvscrubd_scrub_rate_limit_bytes_per_second", [], config.scrubRateMBps * 1e6)
        gauge("kvscrubd_scrub_last_pass_end_time_seconds", [], snap.lastPassEnd ?? 0)
        gauge("kvscrubd_scrub_paused", [], snap.paused ? 1 : 0)
        gauge("kvscrubd_scrub_pass_files_done", [], snap.passActive ? Double(snap.passDone) : 0)
        gauge("kvscrubd_scrub_pass_files", [], snap.passActive ? Double(snap.passTotal) : 0)
        gauge("kvscrubd_regrets_last_day", [], Double(snap.regretsLastDay))
        // The engine ABI in force (-1: not known yet) and how it was chosen, one series per way.
        gauge("kvscrubd_engine_payload_abi", [], snap.engineABI.abi.map(Double.init) ?? -1)
        gauge("kvscrubd_engine_payload_version", [], snap.engineABI.payloadVersion.map(Double.init) ?? -1)
        gauge("kvscrubd_engine_file_version", [], snap.engineABI.generation.map { Double($0.fileVersion) } ?? -1)
        for source in Self.abiSources {
            gauge("kvscrubd_engine_payload_abi_source", [("source", source)], snap.engineABI.source == source ? 1 : 0)
        }
        gauge("kvscrubd_removal_brake_engaged", [], snap.brake.engaged ? 1 : 0)
        gauge("kvscrubd_removal_brake_held_back_files", [], Double(snap.brake.heldBack))
        gauge("kvscrubd_corrupt_pending_removal_files", [], Double(snap.pending))
        // What protects each checkpoint's contents: its own CRC32C (v2), a checksum kvscrubd recorded (v1), nothing yet.
        gauge("kvscrubd_checksum_protected_files", [("source", "file")], Double(snap.census.checksums.inFile))
        gauge("kvscrubd_checksum_protected_files", [("source", "recorded")], Double(snap.census.checksums.recorded))
        gauge("kvscrubd_checksum_protected_files", [("source", "none")], Double(snap.census.checksums.notYetRecorded))

        let c = snap.counters
        counter("kvscrubd_evictions_total", [("cause", "budget")], to: c.evictedBudget)
        counter("kvscrubd_evictions_total", [("cause", "free-space")], to: c.evictedFreeSpace)
        counter("kvscrubd_evictions_total", [("cause", "incompatible")], to: c.evictedIncompatible)
        counter("kvscrubd_evictions_total", [("cause", "superseded")], to: c.evictedSuperseded ?? 0)
        counter("kvscrubd_orphan_temporaries_removed_total", to: c.orphansRemoved ?? 0)
        counter("kvscrubd_orphan_temporary_bytes_removed_total", to: c.orphanBytesRemoved ?? 0)
        counter("kvscrubd_engine_deleted_total", to: c.engineDeletedFiles ?? 0)
        counter("kvscrubd_engine_deleted_bytes_total", to: c.engineDeletedBytes ?? 0)
        counter("kvscrubd_evicted_bytes_total", to: c.evictedBytes)
        for r in Self.regions {
            counter("kvscrubd_corrupt_found_total", [("region", r)], to: c.corruptFoundByRegion?[r] ?? 0)
            counter("kvscrubd_corrupt_removed_total", [("region", r)], to: c.corruptRemovedByRegion?[r] ?? 0)
        }
        counter("kvscrubd_scrub_bytes_total", to: c.scrubBytes)
        counter("kvscrubd_scrub_passes_total", to: c.passesCompleted)
        counter("kvscrubd_inotify_events_total", to: c.inotifyEvents)
        counter("kvscrubd_rescans_total", to: c.rescans)
        counter("kvscrubd_errors_total", to: c.errors)
        counter("kvscrubd_regrets_total", to: c.regrets ?? 0)
        return registry.emitToString()
    }
}
