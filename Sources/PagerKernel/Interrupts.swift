import Glibc
import SystemPackage

/// Runs a system call that returns -1 and sets `errno` on failure, again for as long as it
/// fails with EINTR (a signal arrived before it did anything), and returns its result or the
/// errno it failed with. `errno` is read right after the call that set it.
@inline(__always)
func retryingInterrupts(_ call: () -> Int) -> Result<Int, Errno> {
    while true {
        let r = call()
        if r >= 0 { return .success(r) }
        let e = Glibc.errno
        if e != EINTR { return .failure(Errno(rawValue: e)) }
    }
}

/// The same for a shim that returns `-errno` on failure (the `pager_*` helpers of CPagerKernel).
@inline(__always)
func retryingInterrupts(negatedErrno call: () -> Int32) -> Result<Int32, Errno> {
    while true {
        let r = call()
        if r >= 0 { return .success(r) }
        if r != -EINTR { return .failure(Errno(rawValue: -r)) }
    }
}
