import Glibc
import SystemPackage

/// `poll` for POLLIN on `descriptors`, retrying EINTR, at most `timeoutMilliseconds` (0: just
/// look; -1: forever). Returns which are readable or hung up, in order.
public func pollReadable(_ descriptors: [FileDescriptor], timeoutMilliseconds: Int32, detail: String) throws(KernelError) -> [Bool] {
    var fds = descriptors.map { pollfd(fd: $0.rawValue, events: Int16(POLLIN), revents: 0) }
    switch retryingInterrupts({ Int(poll(&fds, nfds_t(fds.count), timeoutMilliseconds)) }) {
    case .success: return fds.map { $0.revents != 0 }
    case .failure(let e): throw KernelError("poll", e, detail: detail)
    }
}

/// Waits until `descriptor` is readable (or hung up), or `deadline` passes (false) (`poll`).
public func pollReadable(_ descriptor: FileDescriptor, until deadline: Deadline, detail: String) throws(KernelError) -> Bool {
    while true {
        let left = deadline.remainingNanoseconds
        if left == 0 { return false }
        let milliseconds = Int32(clamping: (left + 999_999) / 1_000_000)
        if try pollReadable([descriptor], timeoutMilliseconds: milliseconds, detail: detail)[0] { return true }
    }
}
