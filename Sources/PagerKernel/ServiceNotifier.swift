/// systemd's service notification protocol (`sd_notify`): one datagram of `KEY=value` lines to
/// the socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). With
/// no such variable (not run by systemd with `Type=notify`) every call does nothing. Sending
/// is best effort: a supervisor that went away must not stop the daemon.
public struct ServiceNotifier: Sendable {
    public let socketPath: String?

    public init(socketPath: String? = environmentValue("NOTIFY_SOCKET")) {
        self.socketPath = socketPath.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// `READY=1`: the service is up (listening, or waiting for handoffs), with a status line.
    public func ready(status: String) { send("READY=1\nSTATUS=\(status.oneLine)") }

    /// `STATUS=`: one line of progress, shown by `systemctl status`.
    public func status(_ line: String) { send("STATUS=\(line.oneLine)") }

    /// `STOPPING=1`: the service is shutting down.
    public func stopping(status: String) { send("STOPPING=1\nSTATUS=\(status.oneLine)") }

    private func send(_ fields: String) {
        guard let socketPath else { return }
        try? UnixSocket.sendDatagram(to: socketPath, bytes: Array(fields.utf8))
    }
}

extension String {
    /// One line: a newline inside a value would start another (unintended) field.
    fileprivate var oneLine: String { split(whereSeparator: \.isNewline).joined(separator: " ") }
}
