/// Files and bytes counted per hour over the last day: 24 buckets at most,
/// whatever the rate (a busy engine deletes thousands of files an hour).
struct HourlyWindow: Sendable, Equatable {
    var buckets: [Int64: (files: UInt64, bytes: UInt64)] = [:]

    init() {}

    static func == (a: HourlyWindow, b: HourlyWindow) -> Bool {
        a.buckets.mapValues { [$0.files, $0.bytes] } == b.buckets.mapValues { [$0.files, $0.bytes] }
    }

    static func hour(_ t: Double) -> Int64 { Int64((t / 3600).rounded(.down)) }

    mutating func add(bytes: UInt64, at t: Double) {
        let h = Self.hour(t)
        let b = buckets[h] ?? (0, 0)
        buckets[h] = (b.files + 1, b.bytes + bytes)
        if buckets.count > 24 { buckets = buckets.filter { $0.key > h - 24 } }
    }

    /// Files and bytes in the 24 hours up to `now` (by whole hours).
    func lastDay(now: Double) -> (files: UInt64, bytes: UInt64) {
        let h = Self.hour(now)
        return buckets.filter { $0.key > h - 24 && $0.key <= h }.values.reduce((0, 0)) { ($0.0 + $1.files, $0.1 + $1.bytes) }
    }
}
