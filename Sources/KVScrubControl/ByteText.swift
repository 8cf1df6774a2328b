/// The one way the daemon and its CLI write a size for a person, in binary
/// units: "812 B", "3.4 KiB", "180.0 MiB", "3.1 GiB".
public enum ByteText {
    public static func short(_ n: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = Double(n)
        var i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        if i == 0 { return "\(n) B" }
        let tenths = Int((v * 10).rounded())
        return "\(tenths / 10).\(tenths % 10) \(units[i])"
    }
}
