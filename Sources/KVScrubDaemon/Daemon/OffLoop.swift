import Foundation

/// Blocking work (file reads, SQLite, YAML, the group database) run on a
/// thread that may block: off the socket's event loop and off the
/// cooperative pool, awaited without holding either.
enum OffLoop {
    static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (k: CheckedContinuation<T, Never>) in
            DispatchQueue.global().async { k.resume(returning: body()) }
        }
    }
}
