import Foundation
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

    /// Requests that change the daemon's work or the cache directory.
    public static let mutating: Set<String> = ["scrub-start", "scrub-pause", "scrub-resume", "scrub-cancel", "scrub-now", "reload", "evict-now", "brake-release",
                                               "test-hang-maintenance"]

    public func decide(_ cmd: String, peer: Peer?) -> Decision {
        guard Self.mutating.contains(cmd) else { return .allowed }
        guard let peer else { return .refused("'\(cmd)' changes the daemon's work, and the caller's credentials could not be read") }
        if peer.uid == 0 || peer.uid == daemonUID { return .allowed }
        if let adminGroup, isMember(uid: peer.uid, gid: peer.gid, of: adminGroup) { return .allowed }
        let who = Self.userName(peer.uid).map { "user \($0) (uid \(peer.uid))" } ?? "uid \(peer.uid)"
        let need = adminGroup.map { "root, the daemon's user (\(Self.userName(daemonUID) ?? "uid \(daemonUID)")), or a member of group \($0)" }
            ?? "root or the daemon's user (\(Self.userName(daemonUID) ?? "uid \(daemonUID)")); set admin_group to allow a group"
        return .refused("permission denied: '\(cmd)' changes the daemon's work and needs \(need); \(who) may only read (status, entries, metrics, explain, scrub status)")
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
