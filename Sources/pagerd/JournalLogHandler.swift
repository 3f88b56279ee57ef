import Logging
import PagerKernel
import PagerReport

/// Logs to stderr with syslog priority prefixes (``JournalLine``), for a daemon whose stderr is
/// the journal (`standardErrorIsJournal`): `journalctl -p warning` then filters by level.
struct JournalLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        writeStandardError(JournalLine.format(level: event.level.rawValue, label: label, message: "\(event.message)", metadata: fields))
    }
}
