import Logging
import NIOConcurrencyHelpers

/// The daemon's log level, changeable while it runs (`log_level` on reload).
/// swift-log asks a handler for its level on every call, so a handler that
/// reads this switch (`SwitchedLogHandler`) follows a change at once.
public final class LogLevelSwitch: Sendable {
    private let level: NIOLockedValueBox<Logger.Level>
    public init(_ level: Logger.Level) { self.level = NIOLockedValueBox(level) }
    public var current: Logger.Level {
        get { level.withLockedValue { $0 } }
    }
    public func set(_ new: Logger.Level) { level.withLockedValue { $0 = new } }
}

/// Wraps any handler (journald's, stderr's) so its level is the switch's.
public struct SwitchedLogHandler: LogHandler {
    public var inner: any LogHandler
    public let levelSwitch: LogLevelSwitch

    public init(_ inner: any LogHandler, levelSwitch: LogLevelSwitch) {
        var inner = inner
        inner.logLevel = .trace // the switch decides; the inner handler passes everything it is given
        self.inner = inner
        self.levelSwitch = levelSwitch
    }

    public var logLevel: Logger.Level {
        get { levelSwitch.current }
        // A level set on one logger would change every logger's: the switch is changed by reload only.
        set {}
    }

    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    public func log(event: LogEvent) { inner.log(event: event) }
}
