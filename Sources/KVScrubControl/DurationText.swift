/// The one way the daemon and its CLI write a span of time for a person:
/// "42s", "3m5s", "6h0m", "1d2h" (two units at most, whole seconds).
public enum DurationText {
    public static func short(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m\(s % 60)s" }
        if s < 86400 { return "\(s / 3600)h\((s % 3600) / 60)m" }
        return "\(s / 86400)d\((s % 86400) / 3600)h"
    }
}
