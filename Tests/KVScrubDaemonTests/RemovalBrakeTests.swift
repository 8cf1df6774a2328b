import Testing
@testable import KVScrubDaemon

@Suite struct RemovalBrakeTests {
    @Test func limits_parseTheWaysTheSettingIsWritten() {
        #expect(RemovalBrake.Limit(parsing: "5,5%") == RemovalBrake.Limit(files: 5, percent: 5))
        #expect(RemovalBrake.Limit(parsing: "12") == RemovalBrake.Limit(files: 12, percent: 0))
        #expect(RemovalBrake.Limit(parsing: "2.5%") == RemovalBrake.Limit(files: 0, percent: 2.5))
        #expect(RemovalBrake.Limit(parsing: "off")?.off == true)
        for bad in ["", "five", "5,5", "-1", "150%", "5%,6%", ","] {
            #expect(RemovalBrake.Limit(parsing: bad) == nil, "\(bad)")
        }
    }

    /// Admits one more proven-corrupt file (a mutating call cannot sit inside #expect).
    func admit(_ b: inout RemovalBrake, at t: Double, _ limit: RemovalBrake.Limit = .standard) -> Bool {
        b.admitRemoval(now: t, limit: limit)
    }

    @Test func theSixthProvenCorruptFileInAnHour_engagesTheDefaultBrake() {
        var b = RemovalBrake()
        let t = 1_800_000_000.0
        for i in 0..<30 { b.noteVerified(now: t + Double(i)) }
        for i in 0..<5 {
            let ok = admit(&b, at: t + 40 + Double(i))
            #expect(ok, "file \(i + 1) may go")
        }
        #expect(!b.engaged)
        let sixth = admit(&b, at: t + 50)
        #expect(!sixth)
        #expect(b.engaged && b.heldBack == 1)
        #expect(b.reason?.contains("6 files proven corrupt") == true)
        // Engaged, it holds everything back, however much later, until released.
        let later = admit(&b, at: t + 7200)
        #expect(!later)
        #expect(b.heldBack == 2)
        b.release()
        #expect(!b.engaged && b.heldBack == 0)
        let afterRelease = admit(&b, at: t + 7300)
        #expect(afterRelease)
    }

    @Test func thePercentage_winsWhenManyFilesWereVerified_andOldCountsAgeOut() {
        var b = RemovalBrake()
        let t = 1_800_000_000.0
        for i in 0..<1000 { b.noteVerified(now: t + Double(i) * 0.01) }
        // 5 % of 1000 verified = 50 removals allowed this hour.
        var admitted = 0
        for _ in 0..<50 where admit(&b, at: t + 20) { admitted += 1 }
        #expect(admitted == 50)
        let fiftyFirst = admit(&b, at: t + 21)
        #expect(!fiftyFirst)
        var other = RemovalBrake()
        for _ in 0..<5 { _ = admit(&other, at: t) }
        // An hour on, those five no longer count.
        let anHourOn = admit(&other, at: t + 3700)
        #expect(anHourOn)
        #expect(other.corruptLastHour(now: t + 3700) == 1)
    }

    @Test func off_neverEngages() {
        var b = RemovalBrake()
        let off = RemovalBrake.Limit(parsing: "off")!
        var admitted = 0
        for i in 0..<100 where admit(&b, at: 1_000 + Double(i), off) { admitted += 1 }
        #expect(admitted == 100 && !b.engaged)
    }
}
