import CPagerKernel
import CURing
import Glibc
import SystemPackage

/// An io_uring instance (liburing), for batching socket I/O with few system calls.
///
/// Not thread-safe: one ring belongs to one thread (the transport's I/O loop).
public final class IOURing: @unchecked Sendable {
    private let ring: UnsafeMutablePointer<io_uring>

    /// `io_uring_queue_init` with `entries` submission slots.
    public init(entries: UInt32 = 256) throws(KernelError) {
        ring = .allocate(capacity: 1)
        let r = io_uring_queue_init(entries, ring, 0)
        if r < 0 {
            ring.deallocate()
            throw KernelError("io_uring_queue_init", negatedErrno: r, detail: "\(entries) entries")
        }
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
    }

    /// A completion: the `userData` given at submission and the operation's result
    /// (bytes transferred, or -errno).
    public struct Completion: Equatable, Sendable {
        public var userData: UInt64
        public var result: Int32
    }

    private func nextSQE() throws(KernelError) -> UnsafeMutablePointer<io_uring_sqe> {
        if let sqe = io_uring_get_sqe(ring) { return sqe }
        // The submission queue is full: hand what is queued to the kernel and try again.
        _ = io_uring_submit(ring)
        guard let sqe = io_uring_get_sqe(ring) else { throw KernelError("io_uring_get_sqe", .resourceTemporarilyUnavailable) }
        return sqe
    }

    /// Queues a `recv` into `buffer` (`io_uring_prep_recv`). `waitAll` sets `MSG_WAITALL`.
    public func queueReceive(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, waitAll: Bool = false,
                             userData: UInt64) throws(KernelError) {
        let sqe = try nextSQE()
        io_uring_prep_recv(sqe, fd.rawValue, buffer.baseAddress, buffer.count, waitAll ? PAGER_MSG_WAITALL : 0)
        io_uring_sqe_set_data64(sqe, userData)
    }

    /// Queues a `send` of `buffer` (`io_uring_prep_send`, `MSG_NOSIGNAL`).
    public func queueSend(_ fd: FileDescriptor, _ buffer: UnsafeRawBufferPointer, userData: UInt64) throws(KernelError) {
        let sqe = try nextSQE()
        io_uring_prep_send(sqe, fd.rawValue, buffer.baseAddress, buffer.count, PAGER_MSG_NOSIGNAL)
        io_uring_sqe_set_data64(sqe, userData)
    }

    /// Submits queued operations (`io_uring_submit_and_wait`), waiting for at least `waitFor`
    /// completions. Returns the number submitted.
    @discardableResult
    public func submit(waitFor: UInt32 = 0) throws(KernelError) -> Int {
        while true {
            let r = io_uring_submit_and_wait(ring, waitFor)
            if r >= 0 { return Int(r) }
            if r != -EINTR { throw KernelError("io_uring_submit_and_wait", negatedErrno: r) }
        }
    }

    /// Takes one completion if one is ready (`io_uring_peek_cqe`), without blocking.
    public func popCompletion() -> Completion? {
        var cqe: UnsafeMutablePointer<io_uring_cqe>?
        guard io_uring_peek_cqe(ring, &cqe) == 0, let cqe else { return nil }
        let completion = Completion(userData: cqe.pointee.user_data, result: cqe.pointee.res)
        io_uring_cqe_seen(ring, cqe)
        return completion
    }

    /// Waits for one completion (`io_uring_wait_cqe`).
    public func waitCompletion() throws(KernelError) -> Completion {
        while true {
            var cqe: UnsafeMutablePointer<io_uring_cqe>?
            let r = io_uring_wait_cqe(ring, &cqe)
            if r == -EINTR { continue }
            if r < 0 { throw KernelError("io_uring_wait_cqe", negatedErrno: r) }
            guard let cqe else { continue }
            let completion = Completion(userData: cqe.pointee.user_data, result: cqe.pointee.res)
            io_uring_cqe_seen(ring, cqe)
            return completion
        }
    }
}
