import Foundation
import Synchronization
@testable import KVScrubDaemon

/// A `DaemonClock` a test moves by hand: the parts see hours go by in a
/// moment. It starts at the real time of day, so the times of the files a
/// test writes (the removal rule compares their ctime with the clock) are in
/// its past, as they would be.
final class ManualClock: DaemonClock {
    private let time: Mutex<Double>
    init(at start: Double = Date().timeIntervalSince1970) { time = Mutex(start) }
    func now() -> Double { time.withLock { $0 } }
    func advance(by seconds: Double) { time.withLock { $0 += seconds } }
    func set(_ t: Double) { time.withLock { $0 = t } }
}
