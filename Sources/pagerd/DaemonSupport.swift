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
