import Testing
@testable import KVScrubDaemon

/// The admission rule alone; ControlSocketAttackTests runs it over the real socket with real users.
@Suite struct ConnectionLimitsTests {
    @Test func oneUnprivilegedUser_getsAtMostItsShare_andOthersStillGetIn() {
        let l = ConnectionLimits(total: 10, reserved: 2, perUID: 3)
        for _ in 0..<3 { #expect(l.admit(uid: 1000, privileged: false) == .admitted) }
        guard case .refused(let why) = l.admit(uid: 1000, privileged: false) else { Issue.record("a fourth admitted"); return }
        #expect(why.contains("uid 1000") && why.contains("at most 3 per user"))
        #expect(l.admit(uid: 1001, privileged: false) == .admitted)
        // Leaving frees the slot for the same user.
        l.leave(uid: 1000, privileged: false)
        #expect(l.admit(uid: 1000, privileged: false) == .admitted)
    }

    @Test func theLastSlots_areKeptForPrivilegedPeers() {
        let l = ConnectionLimits(total: 6, reserved: 2, perUID: 100)
        for uid in UInt32(1000)..<1004 { #expect(l.admit(uid: uid, privileged: false) == .admitted) }
        guard case .refused(let why) = l.admit(uid: 2000, privileged: false) else { Issue.record("reserved slot given away"); return }
        #expect(why.contains("kept for root and the admin group"))
        #expect(l.admit(uid: 0, privileged: true) == .admitted)
        #expect(l.admit(uid: 0, privileged: true) == .admitted)
        guard case .refused(let full) = l.admit(uid: 0, privileged: true) else { Issue.record("past the total"); return }
        #expect(full.contains("too many connections (6)"))
        #expect(l.open == (all: 6, unprivileged: 4))
        // Privileged peers are not held to the per-user cap, and give back what they took.
        l.leave(uid: 0, privileged: true)
        #expect(l.open == (all: 5, unprivileged: 4))
    }

    @Test func aPeerWithoutCredentials_countsAsOneUnknownUser() {
        let l = ConnectionLimits(total: 10, reserved: 0, perUID: 2)
        #expect(l.admit(uid: nil, privileged: false) == .admitted)
        #expect(l.admit(uid: nil, privileged: false) == .admitted)
        #expect(l.admit(uid: nil, privileged: false) != .admitted)
    }
}

/// One process, root's included, holds at most its share: a runaway root script cannot lock
/// root's other processes out (#21: 256 connections from one root script answered 0 of 120
/// fresh requests before).
@Suite struct ConnectionLimitsPerProcessTests {
    @Test func oneProcess_evenPrivileged_getsAtMostHalf_andAnotherProcessOfTheSameUserGetsIn() {
        let l = ConnectionLimits(total: 8, reserved: 2, perUID: 100)
        #expect(l.perProcess == 4)
        for _ in 0..<4 { #expect(l.admit(uid: 0, pid: 4242, privileged: true) == .admitted) }
        guard case .refused(let why) = l.admit(uid: 0, pid: 4242, privileged: true) else { Issue.record("a fifth admitted"); return }
        #expect(why.contains("process 4242") && why.contains("at most 4 per process"))
        #expect(l.admit(uid: 0, pid: 4343, privileged: true) == .admitted)
        // Leaving frees the process's slot.
        l.leave(uid: 0, pid: 4242, privileged: true)
        #expect(l.admit(uid: 0, pid: 4242, privileged: true) == .admitted)
        #expect(l.open.all == 5)
    }
}
