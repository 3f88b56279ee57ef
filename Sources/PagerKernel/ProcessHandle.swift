import CPagerKernel
import Glibc

/// Another process, held by a pidfd opened when this is made: what it later says (exited or
/// not) is about that process, even if its pid has been reused since.
public final class ProcessHandle: @unchecked Sendable {
    public let pid: Int32
    /// -1 if the process was already gone (reaped) when this was made.
    private let pidfd: Int32

    public init(_ pid: Int32) {
        self.pid = pid
        let fd = pager_pidfd_open(pid)
        pidfd = fd >= 0 ? fd : -1
    }

    deinit { if pidfd >= 0 { close(pidfd) } }

    /// True once the process has exited (a zombie counts: nothing of it runs any more), waiting
    /// at most `timeoutMilliseconds`.
    public func waitForExit(timeoutMilliseconds: Int) -> Bool {
        if pidfd < 0 { return true }
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        let deadline = monotonicNanoseconds() + UInt64(max(timeoutMilliseconds, 0)) * 1_000_000
        while true {
            let now = monotonicNanoseconds()
            let left = now >= deadline ? 0 : Int32((deadline - now) / 1_000_000)
            let n = poll(&p, 1, left)
            if n > 0 { return true }
            if n == 0 || Glibc.errno != EINTR { return false }
        }
    }
}
