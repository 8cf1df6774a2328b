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

/// The control socket's requests: who may ask (`AccessPolicy`), what is
/// answered from memory on the event loop, and what runs off it.
extension Daemon {
    /// Answers from memory on the socket's event loop; the requests that read
    /// files or the database, parse the config file, or wait for the
    /// maintenance loop (scrub now, history, reload, evict now) run later, off it. Behind
    /// `@_spi(Fuzzing)`: the control fuzz target (Fuzz/, a package of its own) feeds it
    /// arbitrary requests; it is not in the library's public API.
    @_spi(Fuzzing) public func handle(_ request: ControlRequest, peer: AccessPolicy.Peer?) -> ControlReply {
        guard let cmd = ControlCommand(rawValue: request.cmd) else {
            return .now(.failure("unknown command '\(request.cmd)'; known: \(ControlCommand.publicNames)"))
        }
        let policy = AccessPolicy(daemonUID: daemonUID, adminGroup: state.with { $0.config.adminGroup }, testCommands: testFaults)  // one field, not a copy of the whole config
        guard let decision = policy.decideWithoutGroupLookup(cmd, peer: peer) else {
            // The admin group's membership is in the group database, which may block (NSS): off the loop.
            return .later { [self] in
                let decision = await Self.offLoop { policy.decide(cmd, peer: peer) }
                if case .refused(let why) = decision { return refused(cmd, peer, why) }
                return cmd.blocks ? answered(cmd, await handleSlow(cmd, request)) : answered(cmd, handleFromMemory(cmd, request))
            }
        }
        if case .refused(let why) = decision { return .now(refused(cmd, peer, why)) }
        if cmd == .status { return .encoded(statusReply()) }
        if cmd.blocks { return .later { [self] in answered(cmd, await handleSlow(cmd, request)) } }
        return .now(answered(cmd, handleFromMemory(cmd, request)))
    }

    /// A command's reply, once it has done its work: whatever a changing command did shows in the very next status.
    private func answered(_ cmd: ControlCommand, _ reply: ControlResponse) -> ControlResponse {
        if cmd.access == .change { statusCache.withLock { $0 = nil } }
        return reply
    }

    /// `status`, encoded at most once per `statusCacheTime` while the index stays as it was (monitoring
    /// polls it from many clients at once): a file that arrives or goes, an eviction or a removal shows
    /// in the next reply, as does whatever a changing command did; only progress figures (a scrub's
    /// bytes, the rate) may be that much old.
    func statusReply() -> Data {
        let now = ContinuousClock.now
        let generation = state.with { $0.generation }
        if let c = statusCache.withLock({ $0 }), c.generation == generation, now - c.at < Self.statusCacheTime { return Data(c.line) }
        let line = ControlResponse(ok: true, status: status()).line
        statusCache.withLock { $0 = (now, generation, [UInt8](line)) }
        return line
    }

    func refused(_ cmd: ControlCommand, _ peer: AccessPolicy.Peer?, _ why: String) -> ControlResponse {
        events.record(DaemonEvent(.refused, .notice, "request refused", ["cmd": "\(cmd.rawValue)", "uid": "\(peer.map { String($0.uid) } ?? "?")"]))
        return .failure(why)
    }

    /// The commands answered from memory, on the socket's event loop.
    func handleFromMemory(_ cmd: ControlCommand, _ request: ControlRequest) -> ControlResponse {
        switch cmd {
        case .ping: return ControlResponse(ok: true)
        case .status: return ControlResponse(ok: true, status: status())
        case .entries:
            var r = ControlResponse(ok: true, entries: entries())
            r.engineAbi = state.with { $0.engineABI }
            return r
        case .explain:
            guard let name = request.name, !name.isEmpty else { return .failure("explain needs a file: {\"cmd\":\"explain\",\"name\":\"<sha>\"}") }
            return explain(name).map { ControlResponse(ok: true, explanation: $0) } ?? .failure("no checkpoint \(name) in the index")
        case .scrubStatus: return ControlResponse(ok: true, scrub: status().scrub)
        case .scrubStart:
            do {
                let started = try scrubber.startNow()
                var r = scrubReply(started.message)
                // The pass this request started, by its start time, even when it has ended already (a small
                // cache, no rate limit): `scrub start --wait` follows that pass, and would otherwise find
                // none running and exit 0 before the second looks at what it found.
                r.outcome?.scrub?.passStartedAt = started.startedAt
                return r
            } catch { return .failure(error.description) }
        case .scrubPause: return scrubReply(scrubber.pause())
        case .scrubResume: return scrubReply(scrubber.resume())
        case .scrubCancel:
            do { return scrubReply(try scrubber.cancel()) } catch { return .failure(error.description) }
        case .brakeRelease:
            var r = ControlResponse(ok: true, message: scrubber.releaseBrake())
            r.outcome = CommandOutcome(brake: status().brake)
            return r
        case .testHangMaintenance:
            hangMaintenance.set()
            watcher.wake()
            return ControlResponse(ok: true)
        case .scrubNow, .evictNow, .history, .reload, .metrics, .brakeRestore:
            return .failure("'\(cmd.rawValue)' is not answered from memory")
        }
    }

    /// Reads the admin group's members again, from the group database (which may block: call it off every loop).
    func refreshAdminMembers() {
        let members = state.config.adminGroup.flatMap(AdminGroupMembers.resolve)
        adminMembers.withLock { $0 = members }
    }

    /// A scrub control command's sentence, with the scrub it left behind.
    func scrubReply(_ message: String) -> ControlResponse {
        var r = ControlResponse(ok: true, message: message)
        r.outcome = CommandOutcome(scrub: status().scrub)
        return r
    }

    /// Runs blocking work (file reads, SQLite, YAML, the group database) on a thread that
    /// may block: off the socket's event loop and off the cooperative pool.
    static func offLoop<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (k: CheckedContinuation<T, Never>) in
            DispatchQueue.global().async { k.resume(returning: body()) }
        }
    }

    /// The commands that block (files, SQLite, the config file, the maintenance loop), off the event loop.
    func handleSlow(_ cmd: ControlCommand, _ request: ControlRequest) async -> ControlResponse {
        switch cmd {
        case .metrics:
            return await Self.offLoop { [self] in ControlResponse(ok: true, metrics: metrics.render(state: state)) }
        case .reload:
            // Reads and parses the config file.
            let result = await Self.offLoop { [self] in reload() }
            switch result {
            case .failure(let error):
                return .failure("the configuration did not load; the previous settings stay: \(error.description)")
            case .success(let kept):
                var r = ControlResponse(ok: true, message: "configuration reloaded" +
                                        (kept.isEmpty ? "" : "; \(kept.joined(separator: ", ")) change only on restart (kept as they were)"))
                r.outcome = CommandOutcome(reload: .init(keptUntilRestart: kept))
                return r
            }
        case .history:
            let cause = request.cause.flatMap(HistoryEvent.Cause.init(rawValue:))
            if let name = request.cause, cause == nil {
                return .failure("unknown cause '\(name)'; causes: \(HistoryEvent.causes.joined(separator: ", "))")
            }
            let limit = min(max(request.limit ?? 1000, 0), 10_000)
            // SQLite reads block.
            let result = await Self.offLoop { [database] in
                Result { try database.history(since: request.since, cause: cause, limit: limit) }
            }
            switch result {
            case .success(let events):
                var r = ControlResponse(ok: true)
                r.history = events
                return r
            case .failure(let error):
                return .failure("the history cannot be read: \(error)")
            }
        case .brakeRestore:
            // Renames or copies files: off the loop.
            let (message, restored, left) = await Self.offLoop { [scrubber] in scrubber.releaseBrakeAndRestore() }
            var r = ControlResponse(ok: true, message: message)
            r.outcome = CommandOutcome(brake: status().brake, restored: restored, leftInQuarantine: left)
            return r
        case .scrubNow:
            guard let files = request.files, !files.isEmpty else { return .failure("scrub now needs at least one file") }
            guard files.count <= 10_000 else { return .failure("at most 10000 files per request") }
            // Reads whole files.
            let verdicts = await Self.offLoop { [scrubber] in scrubber.verifyNow(files) }
            return ControlResponse(ok: true, verdicts: verdicts)
        case .evictNow:
            // Counted before asking: the maintenance thread may evict before this line would run again.
            let before = state.with { ($0.counters.evictedFiles, $0.counters.evictedBytes) }
            let ticket = evictAsked.withLock { $0 += 1; return $0 }
            watcher.wake()
            let deadline = ContinuousClock.now + .seconds(10)
            while evictDone.withLock({ $0 }) < ticket && ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(5))
            }
            guard evictDone.withLock({ $0 }) >= ticket else { return .failure("the maintenance loop did not get to it within 10 s; see 'kvscrubd status'") }
            let e = state.with { s in
                CommandOutcome.Eviction(evictedFiles: s.counters.evictedFiles - before.0, evictedBytes: s.counters.evictedBytes - before.1,
                                        files: s.index.count, bytes: s.totalBytes, budgetBytes: s.config.budgetMB > 0 ? s.config.budgetBytes : 0)
            }
            var r = ControlResponse(ok: true, message: "evaluated: \(e.evictedFiles) files evicted (\(ByteText.short(e.evictedBytes))); " +
                                    "\(e.files) files, \(ByteText.short(e.bytes)) in the cache" +
                                    (e.budgetBytes > 0 ? " (budget \(ByteText.short(e.budgetBytes)))" : " (no budget)"))
            r.outcome = CommandOutcome(eviction: e)
            return r
        case .ping, .status, .entries, .explain, .scrubStatus, .scrubStart, .scrubPause, .scrubResume, .scrubCancel,
             .brakeRelease, .testHangMaintenance:
            return handleFromMemory(cmd, request)
        }
    }
}
