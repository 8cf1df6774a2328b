import HeapModule

/// Names waiting until a time (new files for their first verification), the
/// earliest first: a min-heap of (due, name) beside each name's latest due
/// time. Asking for a name again moves its time; the heap's older entry for it
/// is skipped when it comes up. Adding and taking cost O(log n), so a burst of
/// 50,000 arrivals does not make every take scan all of them.
struct DueQueue: Sendable {
    private struct Item: Comparable, Sendable {
        var due: Double
        var name: String
        static func < (a: Item, b: Item) -> Bool { (a.due, a.name) < (b.due, b.name) }
    }

    private var heap = Heap<Item>()
    private var latest: [String: Double] = [:]

    var count: Int { latest.count }

    /// Puts `name` in the queue for `due`, or moves it there.
    mutating func schedule(_ name: String, at due: Double) {
        latest[name] = due
        heap.insert(Item(due: due, name: name))
    }

    /// Takes the earliest name due at `now`, if any.
    mutating func takeDue(now: Double) -> String? {
        dropStale()
        guard let top = heap.min, top.due <= now else { return nil }
        _ = heap.removeMin()
        latest.removeValue(forKey: top.name)
        return top.name
    }

    /// The earliest due time in the queue.
    mutating func earliest() -> Double? {
        dropStale()
        return heap.min?.due
    }

    private mutating func dropStale() {
        while let top = heap.min, latest[top.name] != top.due { _ = heap.removeMin() }
    }
}
