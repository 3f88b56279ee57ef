import ArgumentParser
import Logging
import PagerKernel
import PagerOperations
import Synchronization

func makeLogger(_ label: String, _ level: String) -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = Logger.Level(rawValue: level) ?? .info
    return logger
}

extension DemandPriority: ExpressibleByArgument {}

/// systemd's notification socket (`Type=notify`), read once from `$NOTIFY_SOCKET`.
let serviceNotifier = ServiceNotifier()

/// Exit statuses, from sysexits.h, where a failure has a kind an operator's tooling can act on.
enum ExitStatus {
    /// A command line that does not parse or validate (argument-parser uses 64 too).
    static let usage: Int32 = 64
    /// A peer or daemon that is not there (cannot connect, no answer).
    static let unavailable: Int32 = 69
    /// A peer that answered something this program does not understand.
    static let protocolError: Int32 = 76
    /// Not allowed: a key file readable by others, no permission for userfaultfd.
    static let noPermission: Int32 = 77
    /// A configuration that cannot work (a key file missing, a region that does not match).
    static let configuration: Int32 = 78
}

/// Writes `line` and a newline to standard error.
func printError(_ line: String) {
    var stderr = StandardErrorStream()
    print(line, to: &stderr)
}

struct StandardErrorStream: TextOutputStream {
    mutating func write(_ string: String) { writeStandardError(string) }
}

/// Under systemd (`Type=notify`), `STATUS=` with the running migrations' progress every 2 s,
/// so `systemctl status` shows it; nothing without `$NOTIFY_SOCKET`.
final class ProgressReporter: Sendable {
    private let stopped = WaitableState(false)
    private let thread: Mutex<KernelThread?> = Mutex(nil)

    static func start(_ book: DestinationBook) throws -> ProgressReporter? {
        guard serviceNotifier.socketPath != nil else { return nil }
        let reporter = ProgressReporter()
        let thread = try KernelThread(name: "notify-status") { [reporter] in
            while !reporter.stopped.wait(until: { $0 }, deadline: monotonicNanoseconds() + 2_000_000_000) {
                if let line = book.progressLine() { serviceNotifier.status(line) }
            }
        }
        reporter.thread.withLock { $0 = thread }
        return reporter
    }

    func stop() {
        stopped.change { $0 = true }
        thread.withLock { $0 }?.join()
    }
}
