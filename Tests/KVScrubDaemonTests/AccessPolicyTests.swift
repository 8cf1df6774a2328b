import Testing
import KVScrubDaemon

/// The decision alone, on made-up credentials; the end-to-end test
/// (OperateTests) runs it against a real second user over the real socket.
@Suite struct AccessPolicyTests {
    let policy = AccessPolicy(daemonUID: 4242, adminGroup: "root")
    let stranger = AccessPolicy.Peer(pid: 1, uid: 54321, gid: 54321)

    @Test func readingIsOpenToAnyone_evenWithoutCredentials() {
        for cmd in ["status", "entries", "explain", "metrics", "scrub-status", "ping"] {
            #expect(policy.decide(cmd, peer: stranger) == .allowed)
            #expect(policy.decide(cmd, peer: nil) == .allowed)
        }
    }

    @Test func changing_needsRootTheDaemonsUserOrTheAdminGroup() {
        for cmd in AccessPolicy.mutating {
            #expect(policy.decide(cmd, peer: .init(pid: 1, uid: 0, gid: 0)) == .allowed)
            #expect(policy.decide(cmd, peer: .init(pid: 1, uid: 4242, gid: 4242)) == .allowed)
            // Primary group = the admin group (root's gid 0).
            #expect(policy.decide(cmd, peer: .init(pid: 1, uid: 54321, gid: 0)) == .allowed)
            guard case .refused(let why) = policy.decide(cmd, peer: stranger) else { Issue.record("\(cmd) allowed to a stranger"); continue }
            #expect(why.contains("permission denied") && why.contains(cmd) && why.contains("group root") && why.contains("uid 54321"))
            guard case .refused = policy.decide(cmd, peer: nil) else { Issue.record("\(cmd) allowed without credentials"); continue }
        }
    }

    @Test func withoutAnAdminGroup_theRefusalSaysHowToGrantIt() {
        let p = AccessPolicy(daemonUID: 4242, adminGroup: nil)
        guard case .refused(let why) = p.decide("scrub-pause", peer: stranger) else { Issue.record("allowed"); return }
        #expect(why.contains("set admin_group"))
        #expect(AccessPolicy(daemonUID: 4242, adminGroup: "no-such-group-here").decide("reload", peer: stranger) != .allowed)
    }
}
