import Foundation

/// The removal brake: mass "damage" must never become mass deletion.
///
/// Independent corruption is rare: a disk that rots a few sectors a year, a
/// crash mid-write. When many files at once read as corrupt, a cause that
/// hits all of them is far likelier: a layout the checker misreads (revision
/// 1's invented v2 once made every real v2 file "corrupt"), an engine
/// upgrade, a failing disk or controller. Deleting is then exactly wrong: the
/// files may be fine, or the evidence is needed.
///
/// So the daemon counts, over the last hour, the files it verified and the
/// files it proved corrupt (both looks of the removal rule agreeing). While
/// the corrupt count stays within the limit (`removal_brake`: by default 5
/// files or 5 % of the files verified in the hour, whichever is larger),
/// proven-corrupt files are removed. The first one past it engages the brake:
/// it and every later one stay where they are (`removal_brake_action: keep`,
/// the default: removing data is the one irreversible act, and moving files
/// out of the cache is too when the verdicts are a misreading), or, as an
/// operator's choice, go to the brake's quarantine directory
/// (`removal_brake_action: quarantine`; `kvscrubd brake release --restore`
/// puts them back). A journal record says why, `status` says so at the top,
/// the alert fires, and only an operator (`kvscrubd brake release`) lifts it.
/// The brake survives restarts.
///
/// Counts are kept per minute, 60 buckets at most, so memory stays the same
/// whatever the cache holds.
public struct RemovalBrake: Codable, Sendable, Equatable {
    /// `removal_brake_action`: what the brake does with proven-corrupt files while engaged.
    public enum Action: String, Sendable, Equatable, Codable {
        /// They stay under their names, untouched.
        case keep
        /// They move to the brake's quarantine directory.
        case quarantine
    }

    /// `removal_brake`: a number of files, a percentage of the files verified in the hour, or both (the larger wins).
    public struct Limit: Sendable, Equatable, CustomStringConvertible {
        public var files: Int
        public var percent: Double
        /// Never engages (`off`).
        public var off: Bool

        public init(files: Int, percent: Double, off: Bool = false) {
            self.files = files
            self.percent = percent
            self.off = off
        }

        public static let standard = Limit(files: 5, percent: 5)

        /// "5,5%", "5", "5%", or "off".
        public init?(parsing text: String) {
            let t = text.replacingOccurrences(of: " ", with: "").lowercased()
            if t == "off" { self.init(files: 0, percent: 0, off: true); return }
            var files = 0, percent = 0.0
            var sawFiles = false, sawPercent = false
            for part in t.split(separator: ",", omittingEmptySubsequences: false) {
                if part.hasSuffix("%") {
                    guard !sawPercent, let p = Double(part.dropLast()), p.isFinite, p >= 0, p <= 100 else { return nil }
                    percent = p
                    sawPercent = true
                } else {
                    guard !sawFiles, let n = Int(part), n >= 0 else { return nil }
                    files = n
                    sawFiles = true
                }
            }
            guard sawFiles || sawPercent else { return nil }
            self.init(files: files, percent: percent)
        }

        public var description: String { off ? "off" : "\(files),\(percent.formatted())%" }

        /// How many proven-corrupt files an hour with `verified` verifications may remove.
        public func allowance(verified: Int) -> Int {
            max(files, Int((Double(verified) * percent / 100).rounded(.down)))
        }
    }

    /// Minute number → count, for the last hour.
    var verified: [Int64: Int] = [:]
    var corrupt: [Int64: Int] = [:]
    /// When the brake engaged; nil while it is off.
    public var engagedAt: Double?
    public var reason: String?
    /// Proven-corrupt files quarantined (or kept) instead of removed since it engaged.
    public var heldBack: Int = 0

    public init() {}

    public var engaged: Bool { engagedAt != nil }

    static func minute(_ t: Double) -> Int64 { Int64((t / 60).rounded(.down)) }

    private mutating func forget(before now: Double) {
        let oldest = Self.minute(now) - 59
        verified = verified.filter { $0.key >= oldest }
        corrupt = corrupt.filter { $0.key >= oldest }
    }

    public func verifiedLastHour(now: Double) -> Int {
        let oldest = Self.minute(now) - 59
        return verified.filter { $0.key >= oldest }.values.reduce(0, +)
    }

    public func corruptLastHour(now: Double) -> Int {
        let oldest = Self.minute(now) - 59
        return corrupt.filter { $0.key >= oldest }.values.reduce(0, +)
    }

    /// A full verification happened.
    public mutating func noteVerified(now: Double) {
        verified[Self.minute(now), default: 0] += 1
        if verified.count > 60 { forget(before: now) }
    }

    /// One more file was proven corrupt. Returns true when it may be removed;
    /// false when the brake is (or now becomes) engaged and it must be held back.
    public mutating func admitRemoval(now: Double, limit: Limit) -> Bool {
        forget(before: now)
        corrupt[Self.minute(now), default: 0] += 1
        if engaged { heldBack += 1; return false }
        let found = corruptLastHour(now: now)
        let seen = verifiedLastHour(now: now)
        let allowed = limit.allowance(verified: seen)
        guard !limit.off, found > allowed else { return true }
        engagedAt = now
        heldBack = 1
        reason = "\(found) files proven corrupt in the last hour, more than the limit of \(allowed) (removal_brake \(limit), \(seen) files verified)"
        return false
    }

    public mutating func release() {
        engagedAt = nil
        reason = nil
        heldBack = 0
        corrupt = [:]
    }
}
