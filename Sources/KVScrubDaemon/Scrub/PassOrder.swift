import HeapModule
import KVCFormat

/// The scrub pass's walk through the index in name order, and what is left of
/// it, kept up to date as files come and go, at a cost that does not grow with
/// the index (issue 13: the walk used to filter and sort every name for every
/// file it verified, and `status` counted what was left the same way).
///
/// A pass verifies every name after its cursor (the last name it finished),
/// in order. When the pass starts (or a restart resumes it), the names after
/// the cursor are sorted once into `snapshot`; names that arrive during the
/// pass go into a min-heap, `arrivals`, when they sort after the cursor. The
/// next name is the smaller of the snapshot's next and the heap's top, each
/// skipped lazily when it has left the index or fallen behind the cursor (a
/// name can be in both, if it left and came back; the cursor passing it makes
/// the second copy stale). So a step costs O(log n) amortized, and `leftFiles`
/// and `leftBytes` are counters kept by every insert, removal and step: a new
/// name after the cursor adds to them, one that leaves takes away, and the
/// cursor passing a name takes it away. Names that arrived between choosing
/// the next name and finishing it sort before the new cursor: they wait for
/// the next pass, and leave the counters when the cursor passes them.
struct PassOrder: Sendable {
    private var snapshot: [String] = []
    private var position = 0
    private var arrivals = Heap<String>()
    /// Files and bytes of the pass still to verify (the index's names after the cursor).
    private(set) var leftFiles = 0
    private(set) var leftBytes: UInt64 = 0

    /// Starts the walk over `index`'s names after `cursor` (nil: all); an inactive pass walks nothing.
    mutating func rebuild(index: [String: CacheEntry], cursor: String?, active: Bool) {
        snapshot = active ? index.keys.filter { name in cursor.map { name > $0 } ?? true }.sorted() : []
        position = 0
        arrivals = Heap()
        leftFiles = snapshot.count
        leftBytes = snapshot.reduce(0) { $0 + (index[$1]?.fileSize ?? 0) }
    }

    /// A name put in the index during the pass (`oldSize`: the size it replaced, nil for a new name).
    mutating func inserted(_ name: String, size: UInt64, oldSize: UInt64?, cursor: String?) {
        guard cursor.map({ name > $0 }) ?? true else { return }
        if let oldSize {
            leftBytes = leftBytes - oldSize + size
        } else {
            leftFiles += 1
            leftBytes += size
            arrivals.insert(name)
        }
    }

    /// A name taken out of the index during the pass.
    mutating func removed(_ name: String, size: UInt64, cursor: String?) {
        guard cursor.map({ name > $0 }) ?? true else { return }
        leftFiles -= 1
        leftBytes -= size
    }

    /// The next name to verify: the smallest name in the index after the cursor.
    mutating func next(index: [String: CacheEntry], cursor: String?) -> String? {
        func stale(_ n: String) -> Bool { index[n] == nil || (cursor.map { n <= $0 } ?? false) }
        while position < snapshot.count && stale(snapshot[position]) { position += 1 }
        while let top = arrivals.min, stale(top) { _ = arrivals.removeMin() }
        let a = position < snapshot.count ? snapshot[position] : nil
        switch (a, arrivals.min) {
        case (nil, nil): return nil
        case (let x?, nil): return x
        case (nil, let y?): return y
        case (let x?, let y?): return min(x, y)
        }
    }

    /// The cursor moved from `old` to `name` (just verified); `index` as it is now.
    mutating func advanced(from old: String?, to name: String, index: [String: CacheEntry]) {
        // The name itself, unless it left the index meanwhile (its removal already counted).
        if let e = index[name], old.map({ name > $0 }) ?? true {
            leftFiles -= 1
            leftBytes -= e.fileSize
        }
        // Arrivals the cursor passed: they wait for the next pass.
        while let top = arrivals.min, top <= name {
            _ = arrivals.removeMin()
            while arrivals.min == top { _ = arrivals.removeMin() } // a name that left and came back is there twice
            if top < name, old.map({ top > $0 }) ?? true, let e = index[top] {
                leftFiles -= 1
                leftBytes -= e.fileSize
            }
        }
    }
}
