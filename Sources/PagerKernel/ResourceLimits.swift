import Glibc
import SystemPackage

/// The open-file limit (`RLIMIT_NOFILE`) before and after ``raiseOpenFileLimit()``.
public struct OpenFileLimit: Sendable, Equatable {
    /// The soft limit: the most descriptors this process may hold open now.
    public var soft: UInt64
    /// The hard limit: how far the soft one may be raised without privilege.
    public var hard: UInt64
}

/// Raises the soft open-file limit to the hard one (`setrlimit(RLIMIT_NOFILE)`) and returns
/// the limits now in force.
///
/// A source holds one descriptor per connection. The usual soft limit (1024) would let a flood
/// of idle connections, or simply many destinations, make `accept` fail with `EMFILE` for
/// everyone, while the hard limit (often 524288 under systemd) is there for the asking.
/// The corresponding C functions are `getrlimit` and `setrlimit`.
@discardableResult
public func raiseOpenFileLimit() throws(KernelError) -> OpenFileLimit {
    var limit = rlimit()
    if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) != 0 {
        throw KernelError("getrlimit", Errno(rawValue: Glibc.errno), detail: "RLIMIT_NOFILE")
    }
    if limit.rlim_cur < limit.rlim_max {
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) != 0 {
            throw KernelError("setrlimit", Errno(rawValue: Glibc.errno), detail: "RLIMIT_NOFILE to \(limit.rlim_max)")
        }
        limit = raised
    }
    return OpenFileLimit(soft: UInt64(limit.rlim_cur), hard: UInt64(limit.rlim_max))
}
