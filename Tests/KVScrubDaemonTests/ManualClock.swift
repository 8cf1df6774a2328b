import Foundation
import NIOConcurrencyHelpers
@testable import KVScrubDaemon

/// A `DaemonClock` a test moves by hand: the parts see hours go by in a
/// moment. It starts at the real time of day, so the times of the files a
/// test writes (the removal rule compares their ctime with the clock) are in
/// its past, as they would be.
final class ManualClock: DaemonClock {
    private let time: NIOLockedValueBox<Double>
    init(at start: Double = Date().timeIntervalSince1970) { time = NIOLockedValueBox(start) }
    func now() -> Double { time.withLockedValue { $0 } }
    func advance(by seconds: Double) { time.withLockedValue { $0 += seconds } }
    func set(_ t: Double) { time.withLockedValue { $0 = t } }
}
