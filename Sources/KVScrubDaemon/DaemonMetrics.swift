import Foundation
import KVCFormat
import Metrics
import Prometheus
import NIOConcurrencyHelpers

/// The daemon's Prometheus metrics, through swift-metrics with the
/// swift-prometheus backend on a registry of our own (no global
/// `MetricsSystem.bootstrap`: the daemon passes the factory explicitly).
///
/// The daemon's counters already live in `DaemonState` (several persist in
/// the state file so they go on after a restart), so the metrics are brought
/// up to date from one state snapshot at each scrape: counters advance by
/// what the state gained since the last scrape (they start at the persisted
/// totals, and never go backwards), gauges are set. Nothing is counted twice
/// and the hot paths (inotify, scrub reads) never touch a metric.
public final class DaemonMetrics: Sendable {
    private let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    /// Each counter's value as last exported, keyed by name and labels.
    private let exported = NIOLockedValueBox<[String: Int64]>([:])
    private let counters = NIOLockedValueBox<[String: Metrics.Counter]>([:])
    private let meters = NIOLockedValueBox<[String: Metrics.Meter]>([:])

    // "corrupt" stays in the index only under dry_run (otherwise it is removed at once).
    static let verdicts = ["ok", "corrupt", "incompatible", "unverified"]
    static let versions = ["1", "2", "unknown"]
    static let regions = Region.allCases.map(\.rawValue) + ["unknown"]
    static let causes = ["budget", "free-space", "incompatible"]
    static let abiSources = ["configured", "newest checkpoint", "latest arrival", "none yet"]

    public init() {
        factory = PrometheusMetricsFactory(registry: registry)
    }

    private func key(_ name: String, _ labels: [(String, String)]) -> String {
        name + labels.map { "|\($0.0)=\($0.1)" }.joined()
    }

    /// The metric made once per name and labels: the registry refuses a second registration.
    private static func cached<M: Sendable>(_ table: NIOLockedValueBox<[String: M]>, _ k: String, make: () -> M) -> M {
        table.withLockedValue { m in
            if let existing = m[k] { return existing }
            let made = make()
            m[k] = made
            return made
        }
    }

    private func counter(_ name: String, _ labels: [(String, String)] = [], to value: UInt64) {
        let k = key(name, labels)
        let c = Self.cached(counters, k) { Metrics.Counter(label: name, dimensions: labels, factory: factory) }
        let target = Int64(clamping: value)
        let delta = exported.withLockedValue { e -> Int64 in
            let d = target - (e[k] ?? 0)
            if d > 0 { e[k] = target }
            return d
        }
        if delta > 0 { c.increment(by: delta) }
    }

    private func gauge(_ name: String, _ labels: [(String, String)] = [], _ value: Double) {
        Self.cached(meters, key(name, labels)) { Metrics.Meter(label: name, dimensions: labels, factory: factory) }.set(value)
    }

    /// The text exposition of the current state.
    public func render(state: DaemonState) -> String {
        struct Snapshot {
            var files: [String: (Int, UInt64)] = [:]
            var counters: DaemonState.Counters
            var budget: UInt64
            var free: UInt64?
            var fsBytes: UInt64?
            var rate: Double
            var limit: Double
            var lastPassEnd: Double?
            var paused: Bool
            var passActive: Bool
            var passDone: Int
            var passTotal: Int
            var regretsLastDay: Int
            var engineABI: EngineABI.Resolution
            var brake: RemovalBrake
            var pending: Int
            var protection: (inFile: Int, recorded: Int, none: Int) = (0, 0, 0)
        }
        let now = Date().timeIntervalSince1970
        let snap = state.with { s -> Snapshot in
            var snap = Snapshot(counters: s.counters, budget: s.config.budgetBytes, free: s.freeBytes, fsBytes: s.fsBytes,
                                rate: s.scrubRate, limit: s.config.scrubRateMBps * 1e6, lastPassEnd: s.scrub.lastPass?.endedAt,
                                paused: s.scrub.paused == true, passActive: s.scrub.passStartedAt != nil, passDone: s.scrub.filesDone,
                                passTotal: s.passFilesTotal,
                                regretsLastDay: s.regretLog.filter { now - $0.at <= 86400 }.count,
                                engineABI: s.engineABI, brake: s.brake, pending: s.pendingRemoval.count)
            let v1 = s.v1Protection
            snap.protection = (s.index.values.filter { $0.header?.version == 2 }.count, v1.recorded, v1.notYet)
            for e in s.index.values {
                let verdict = e.unusable != nil ? "incompatible" : (s.verdicts[e.fileName].map { $0 == .ok ? "ok" : $0.rawValue } ?? "unverified")
                let version = e.header.map { String($0.version) } ?? "unknown"
                let k = verdict + "|" + version
                let old = snap.files[k] ?? (0, 0)
                snap.files[k] = (old.0 + 1, old.1 + e.fileSize)
            }
            return snap
        }
        for v in Self.verdicts {
            for ver in Self.versions {
                let (n, b) = snap.files[v + "|" + ver] ?? (0, 0)
                gauge("kvscrubd_files", [("verdict", v), ("version", ver)], Double(n))
                gauge("kvscrubd_bytes", [("verdict", v), ("version", ver)], Double(b))
            }
        }
        gauge("kvscrubd_budget_bytes", [], Double(snap.budget))
        if let f = snap.free { gauge("kvscrubd_filesystem_free_bytes", [], Double(f)) }
        if let f = snap.fsBytes { gauge("kvscrubd_filesystem_size_bytes", [], Double(f)) }
        gauge("kvscrubd_scrub_rate_bytes_per_second", [], snap.rate)
        gauge("kvscrubd_scrub_rate_limit_bytes_per_second", [], snap.limit)
        gauge("kvscrubd_scrub_last_pass_end_time_seconds", [], snap.lastPassEnd ?? 0)
        gauge("kvscrubd_scrub_paused", [], snap.paused ? 1 : 0)
        gauge("kvscrubd_scrub_pass_files_done", [], snap.passActive ? Double(snap.passDone) : 0)
        gauge("kvscrubd_scrub_pass_files_total", [], snap.passActive ? Double(snap.passTotal) : 0)
        gauge("kvscrubd_regrets_last_day", [], Double(snap.regretsLastDay))
        // The engine ABI in force (-1: not known yet) and how it was chosen, one series per way.
        gauge("kvscrubd_engine_payload_abi", [], snap.engineABI.abi.map(Double.init) ?? -1)
        for source in Self.abiSources {
            gauge("kvscrubd_engine_payload_abi_source", [("source", source)], snap.engineABI.source == source ? 1 : 0)
        }
        gauge("kvscrubd_removal_brake_engaged", [], snap.brake.engaged ? 1 : 0)
        gauge("kvscrubd_removal_brake_held_back_files", [], Double(snap.brake.heldBack))
        gauge("kvscrubd_corrupt_pending_removal_files", [], Double(snap.pending))
        // What protects each checkpoint's contents: its own CRC32C (v2), a checksum kvscrubd recorded (v1), nothing yet.
        gauge("kvscrubd_checksum_protected_files", [("source", "file")], Double(snap.protection.inFile))
        gauge("kvscrubd_checksum_protected_files", [("source", "recorded")], Double(snap.protection.recorded))
        gauge("kvscrubd_checksum_protected_files", [("source", "none")], Double(snap.protection.none))

        let c = snap.counters
        counter("kvscrubd_evictions_total", [("cause", "budget")], to: c.evictedBudget)
        counter("kvscrubd_evictions_total", [("cause", "free-space")], to: c.evictedFreeSpace)
        counter("kvscrubd_evictions_total", [("cause", "incompatible")], to: c.evictedIncompatible)
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
