import KVScrubControl
@testable import KVScrubDaemon
import Testing

/// The decision alone, on made-up credentials; the end-to-end test
/// (OperateTests) runs it against a real second user over the real socket.
@Suite struct AccessPolicyTests {
    let policy = AccessPolicy(daemonUID: 4242, adminGroup: "root")
    let stranger = AccessPolicy.Peer(pid: 1, uid: 54321, gid: 54321)

    @Test func readingIsOpenToAnyone_evenWithoutCredentials() {
        for cmd in ControlCommand.allCases where cmd.access == .read {
            #expect(policy.decide(cmd, peer: stranger) == .allowed)
            #expect(policy.decide(cmd, peer: nil) == .allowed)
        }
    }

    @Test func changing_needsRootTheDaemonsUserOrTheAdminGroup() {
        for cmd in ControlCommand.allCases where cmd.access == .change {
            #expect(policy.decide(cmd, peer: .init(pid: 1, uid: 0, gid: 0)) == .allowed)
            #expect(policy.decide(cmd, peer: .init(pid: 1, uid: 4242, gid: 4242)) == .allowed)
            // Primary group = the admin group (root's gid 0).
            #expect(policy.decide(cmd, peer: .init(pid: 1, uid: 54321, gid: 0)) == .allowed)
            guard case .refused(let why) = policy.decide(cmd, peer: stranger) else { Issue.record("\(cmd) allowed to a stranger"); continue }
            #expect(why.contains("permission denied") && why.contains(cmd.rawValue) && why.contains("group root") && why.contains("uid 54321"))
            guard case .refused = policy.decide(cmd, peer: nil) else { Issue.record("\(cmd) allowed without credentials"); continue }
        }
    }

    @Test func withoutAnAdminGroup_theRefusalSaysHowToGrantIt() {
        let p = AccessPolicy(daemonUID: 4242, adminGroup: nil)
        guard case .refused(let why) = p.decide(.scrubPause, peer: stranger) else { Issue.record("allowed"); return }
        #expect(why.contains("set admin_group"))
        #expect(AccessPolicy(daemonUID: 4242, adminGroup: "no-such-group-here").decide(.reload, peer: stranger) != .allowed)
    }

    /// The protocol has no test seam: the watchdog tests hang the maintenance loop with SIGUSR2, which
    /// only a daemon run with KVSCRUBD_TEST_FAULTS=1 traps (`TestFaults`), not with a command.
    @Test func theProtocol_hasNoTestCommands() {
        #expect(ControlCommand(rawValue: "test-hang-maintenance") == nil)
        #expect(!ControlCommand.publicNames.contains("test-"))
    }

    @Test func theGroupDatabase_isReadOnlyForAChangeByAnOrdinaryUser_whileAnAdminGroupIsSet() {
        // Everything else is decided on the event loop without NSS.
        for cmd in ControlCommand.allCases {
            for peer in [AccessPolicy.Peer(pid: 1, uid: 0, gid: 0), AccessPolicy.Peer(pid: 1, uid: 4242, gid: 1), stranger] {
                let quick = policy.decideWithoutGroupLookup(cmd, peer: peer)
                let needsLookup = cmd.access == .change && !policy.isPrivileged(peer)
                #expect((quick == nil) == needsLookup, "\(cmd) for uid \(peer.uid)")
                if let quick { #expect(quick == policy.decide(cmd, peer: peer)) }
            }
            #expect(AccessPolicy(daemonUID: 4242, adminGroup: nil).decideWithoutGroupLookup(cmd, peer: stranger) != nil)
        }
    }
}
