/// A log line as journald reads it from a service's stderr: a `<N>` syslog priority prefix
/// (0 emergency ... 7 debug; `SyslogLevelPrefix=` is on by default), then the text. Timestamps
/// are left out: the journal stamps every line itself.
public enum JournalLine {
    /// syslog priorities, by the names swift-log uses for its levels.
    public static func priority(_ level: String) -> Int {
        switch level {
        case "critical": 2
        case "error": 3
        case "warning": 4
        case "notice": 5
        case "info": 6
        default: 7 // debug, trace
        }
    }

    /// One line (newlines in the message become spaces: each journal entry is one line).
    public static func format(level: String, label: String, message: String, metadata: String = "") -> String {
        let text = (metadata.isEmpty ? message : "\(metadata) \(message)").split(whereSeparator: \.isNewline).joined(separator: " ")
        return "<\(priority(level))>\(label): \(text)\n"
    }
}
