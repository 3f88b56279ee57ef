import Glibc

/// Monotonic time in nanoseconds (`clock_gettime(CLOCK_MONOTONIC)`).
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Sleeps the calling thread (`usleep`): for pacing a workload, never for waiting on an event.
public func sleepMilliseconds(_ ms: Int) { usleep(UInt32(ms * 1000)) }

/// Sleeps the calling thread (`usleep`), for pacing.
public func sleepMicroseconds(_ us: Int) { usleep(UInt32(us)) }

/// Flushes standard output (`fflush(stdout)`): a line meant for a parent reading a log file.
public func fflushStandardOutput() { fflush(nil) } // nil: every output stream, stdout included

/// Whether standard error is a terminal (`isatty(2)`): progress bars redraw in place there.
public var standardErrorIsTerminal: Bool { isatty(2) == 1 }

/// Writes `text` to standard error unbuffered (`write(2)`).
public func writeStandardError(_ text: String) {
    var t = text
    t.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}
