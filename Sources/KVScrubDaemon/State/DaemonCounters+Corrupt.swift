import KVScrubControl

extension DaemonCounters {
    /// One corrupt file found in `region`, and removed (or quarantined) or not.
    mutating func countCorrupt(region: String, removed: Bool) {
        corruptFound += 1
        corruptFoundByRegion = (corruptFoundByRegion ?? [:]).merging([region: 1], uniquingKeysWith: +)
        if removed {
            corruptRemoved += 1
            corruptRemovedByRegion = (corruptRemovedByRegion ?? [:]).merging([region: 1], uniquingKeysWith: +)
        }
    }
}
