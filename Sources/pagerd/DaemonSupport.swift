import ArgumentParser
import Logging
import PagerKernel

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
