import Glibc

/// Monotonic time in nanoseconds (`clock_gettime(CLOCK_MONOTONIC)`).
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// A point on the monotonic clock (``monotonicNanoseconds()``) at which a wait gives up, with
/// the time it allowed from its start, so that whoever gives up can say how long it waited.
///
/// Absolute, not a timeout per call: a peer that trickles one byte at a time gets the same
/// allowance for the whole exchange as one that sends nothing.
public struct Deadline: Sendable, Equatable {
    /// The monotonic instant, in nanoseconds.
    public let nanoseconds: UInt64
    /// How long the wait was allowed from its start, in nanoseconds (for messages).
    public let allowedNanoseconds: UInt64

    public init(nanoseconds: UInt64, allowedNanoseconds: UInt64) {
        self.nanoseconds = nanoseconds
        self.allowedNanoseconds = allowedNanoseconds
    }

    /// `allowed` nanoseconds from now.
    public static func after(nanoseconds allowed: UInt64) -> Deadline {
        let now = monotonicNanoseconds()
        // Saturates: a huge allowance (UInt64.max: no deadline to speak of) must not wrap.
        let (at, overflow) = now.addingReportingOverflow(allowed)
        return Deadline(nanoseconds: overflow ? .max : at, allowedNanoseconds: allowed)
    }

    /// Nanoseconds left, 0 once the deadline has passed.
    public var remainingNanoseconds: UInt64 {
        let now = monotonicNanoseconds()
        return now >= nanoseconds ? 0 : nanoseconds - now
    }

    /// The allowance as people read it: "10 s", "1.5 s", "250 ms".
    public var allowedDescription: String {
        let ms = allowedNanoseconds / 1_000_000
        if ms < 1000 { return "\(ms) ms" }
        if ms % 1000 == 0 { return "\(ms / 1000) s" }
        return "\(ms / 1000).\(ms % 1000 / 100) s"
    }
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
