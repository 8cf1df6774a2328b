import Foundation
import KVScrubControl
#if canImport(Glibc)
import Glibc
#endif

/// Who may ask the daemon what, decided from the connecting process's
/// credentials as the kernel reports them (`SO_PEERCRED`), never from
/// anything the client says about itself.
///
/// Reading is open to whoever can connect (the socket's mode and group are
/// the first gate). Changing something — starting, pausing or cancelling a
/// scrub, verifying (and so possibly removing) files now, reloading, evicting —
/// needs root, the daemon's own user, or membership of `admin_group`.
/// Membership counts the peer's primary group and the group's member list
/// in the group database, as `id` would show it for that user.
public struct AccessPolicy: Sendable {
    /// Credentials of the process at the other end of a connection.
    public struct Peer: Sendable, Equatable {
        public var pid: Int32
        public var uid: UInt32
        public var gid: UInt32
        public init(pid: Int32, uid: UInt32, gid: UInt32) { self.pid = pid; self.uid = uid; self.gid = gid }
    }

    public enum Decision: Sendable, Equatable {
        case allowed
        case refused(String)
    }

    public let daemonUID: UInt32
    public let adminGroup: String?

    public init(daemonUID: UInt32 = getuid(), adminGroup: String?) {
        self.daemonUID = daemonUID
        self.adminGroup = adminGroup
    }

    /// Root and the daemon's own user: decided from the credentials alone, without the group database.
    public func isPrivileged(_ peer: Peer) -> Bool { peer.uid == 0 || peer.uid == daemonUID }

    /// What can be decided without reading the group database (which may block, on NSS): everything
    /// but a change asked by someone who is neither root nor the daemon's user while an admin group is set.
    public func decideWithoutGroupLookup(_ cmd: ControlCommand, peer: Peer?) -> Decision? {
        switch cmd.access {
        case .read: return .allowed
        case .change:
            guard let peer else { return .refused("'\(cmd.rawValue)' changes the daemon's work, and the caller's credentials could not be read") }
            if isPrivileged(peer) { return .allowed }
            return adminGroup == nil ? refusal(cmd, peer) : nil
        }
    }

    /// The whole decision; reads the group database when it must (call it off the event loop then).
    public func decide(_ cmd: ControlCommand, peer: Peer?) -> Decision {
        if let d = decideWithoutGroupLookup(cmd, peer: peer) { return d }
        guard let peer, let adminGroup else { return refusal(cmd, peer) }
        return isMember(uid: peer.uid, gid: peer.gid, of: adminGroup) ? .allowed : refusal(cmd, peer)
    }

    private func refusal(_ cmd: ControlCommand, _ peer: Peer?) -> Decision {
        let who = peer.map { p in Self.userName(p.uid).map { "user \($0) (uid \(p.uid))" } ?? "uid \(p.uid)" } ?? "an unknown caller"
        let need = adminGroup.map { "root, the daemon's user (\(Self.userName(daemonUID) ?? "uid \(daemonUID)")), or a member of group \($0)" }
            ?? "root or the daemon's user (\(Self.userName(daemonUID) ?? "uid \(daemonUID)")); set admin_group to allow a group"
        let reads = ControlCommand.allCases.filter { $0.access == .read && $0 != .ping }.map(\.rawValue).joined(separator: ", ")
        return .refused("permission denied: '\(cmd.rawValue)' changes the daemon's work and needs \(need); \(who) may only read (\(reads))")
    }

    func isMember(uid: UInt32, gid: UInt32, of group: String) -> Bool {
        guard let gr = getgrnam(group) else { return false }
        let target = gr.pointee.gr_gid
        if gid == target { return true }
        guard let pw = getpwuid(uid) else { return false }
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        if getgrouplist(pw.pointee.pw_name, pw.pointee.pw_gid, &groups, &count) < 0 {
            groups = [gid_t](repeating: 0, count: Int(count))
            _ = getgrouplist(pw.pointee.pw_name, pw.pointee.pw_gid, &groups, &count)
        }
        return groups.prefix(Int(max(0, count))).contains(target)
    }

    static func userName(_ uid: UInt32) -> String? {
        guard let pw = getpwuid(uid) else { return nil }
        return String(cString: pw.pointee.pw_name)
    }
}

/// The admin group as the group database lists it, resolved off the event
/// loop (at start-up and at every reload) so the loop can tell an admin from
/// anyone else when it hands out the connections kept for them
/// (`ConnectionLimits`) without calling into NSS. Permission itself is
/// decided by `AccessPolicy.decide`, which reads the database afresh.
public struct AdminGroupMembers: Sendable, Equatable {
    public var gid: UInt32
    public var uids: Set<UInt32>

    /// Reads the group database (may block); nil when there is no such group.
    public static func resolve(_ group: String) -> AdminGroupMembers? {
        guard let gr = getgrnam(group) else { return nil }
        var members = AdminGroupMembers(gid: gr.pointee.gr_gid, uids: [])
        var names: [String] = []
        var p = gr.pointee.gr_mem
        while let name = p?.pointee { names.append(String(cString: name)); p = p?.advanced(by: 1) }
        for name in names { if let pw = getpwnam(name) { members.uids.insert(pw.pointee.pw_uid) } }
        return members
    }

    public func contains(_ peer: AccessPolicy.Peer) -> Bool { peer.gid == gid || uids.contains(peer.uid) }
}
