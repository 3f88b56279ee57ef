import Logging
import PagerKernel

/// A log that tests read: every message logged through ``logger``, with the scheduling
/// policy of the thread that logged it, kept in order; tests look for lines or wait for one.
public final class RecordedLog: Sendable {
    public struct Record: Sendable {
        public let message: String
        public let policy: SchedulingPolicy?
    }

    public let records = WaitableState<[Record]>([])

    public init() {}

    /// A logger (info and above) whose every message is recorded here.
    public var logger: Logger { Logger(label: "test") { _ in Handler(log: self) } }

    /// Every message so far.
    public var messages: [String] { records.withLock { $0.map(\.message) } }

    /// Whether a message containing `text` was logged.
    public func contains(_ text: String) -> Bool { records.withLock { $0.contains { $0.message.contains(text) } } }

    /// The first record whose message contains `text`, waiting (at most `seconds`) for it.
    public func first(containing text: String, seconds: Double = 10) -> Record? {
        var found: Record?
        _ = records.wait(until: { r in
            found = r.first { $0.message.contains(text) }
            return found != nil
        }, deadline: monotonicNanoseconds() + UInt64(seconds * 1e9))
        return found
    }

    struct Handler: LogHandler {
        let log: RecordedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
                 file: String, function: String, line: UInt) {
            let policy = try? currentThreadSchedulingPolicy()
            log.records.change { $0.append(Record(message: "\(message)", policy: policy)) }
        }
    }
}
