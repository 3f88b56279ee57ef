import CPagerKernel
import Glibc
import Synchronization
import SystemPackage

/// A dedicated OS thread (`pthread_create`), for fault handling and serving loops that
/// block in `read`, `poll` or io_uring waits and so must stay off Swift's cooperative pool.
public final class KernelThread: @unchecked Sendable {
    private var thread: pthread_t
    private var joined = false

    /// Starts `body` on a new thread. `cpu` pins the thread to one CPU (sched_setaffinity)
    /// before `body` runs; pinning failures are ignored because they only affect timing.
    public init(name: String, cpu: Int? = nil, _ body: @escaping @Sendable () -> Void) throws(KernelError) {
        final class Box: @unchecked Sendable {
            let body: @Sendable () -> Void
            let cpu: Int?
            let name: String
            init(_ body: @escaping @Sendable () -> Void, cpu: Int?, name: String) {
                self.body = body
                self.cpu = cpu
                self.name = name
            }
        }
        let box = Unmanaged.passRetained(Box(body, cpu: cpu, name: name))
        var t = pthread_t()
        // Every thread starts as a normal thread, whatever its creator runs as (a real-time
        // fault loop must not hand SCHED_FIFO to a push receiver it starts).
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        var normal = sched_param()
        pthread_attr_setinheritsched(&attributes, Int32(PTHREAD_EXPLICIT_SCHED))
        pthread_attr_setschedpolicy(&attributes, SCHED_OTHER)
        pthread_attr_setschedparam(&attributes, &normal)
        let start: @convention(c) (UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? = { raw in
            // SAFETY: `raw` is the retained Box passed below; this thread owns the +1.
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            if let cpu = box.cpu { _ = pager_pin_to_cpu(Int32(cpu)) }
            // Thread names are limited to 15 bytes plus NUL by the kernel.
            pager_set_thread_name(String(box.name.utf8.prefix(15))!)
            box.body()
            return nil
        }
        var rc = pthread_create(&t, &attributes, start, box.toOpaque())
        // Leaving SCHED_IDLE needs privilege: without it the thread inherits what it can.
        if rc == EPERM { rc = pthread_create(&t, nil, start, box.toOpaque()) }
        if rc != 0 {
            box.release()
            throw KernelError("pthread_create", Errno(rawValue: rc), detail: name)
        }
        thread = t
    }

    /// Waits for the thread to finish (`pthread_join`). Calling it twice is a no-op.
    public func join() {
        guard !joined else { return }
        joined = true
        pthread_join(thread, nil)
    }

    deinit {
        if !joined { pthread_detach(thread) }
    }
}

/// Makes the calling thread a background thread (`SCHED_IDLE`): bulk work such as the
/// background push runs only on CPU time nobody else wants, so it never delays a demand
/// thread. On a host whose CPUs never idle it makes no progress: demand paging still does.
/// A background thread that takes a lock a demand thread needs must do so inside
/// ``withForegroundPriority(_:)``, or it can be starved while holding it (an inversion that
/// was seen stalling a TCG guest's faults for seconds).
public func makeCurrentThreadBackground() throws(KernelError) {
    let r = pager_set_thread_idle(1)
    if r < 0 { throw KernelError("sched_setscheduler(SCHED_IDLE)", negatedErrno: r) }
    pager_mark_background_thread(1)
}

/// Makes the calling thread a demand thread (`SCHED_FIFO`, priority 1): it preempts bulk
/// work and busy workload threads (a TCG vCPU, a normal-priority push) the moment a fault's
/// request or reply is ready, instead of waiting for the CPU's current task to use up its
/// slice. Demand threads only run briefly per fault and block in `poll`/`recv` otherwise, so
/// they cannot monopolise a CPU (and the kernel keeps a share for normal tasks regardless).
/// Returns false, leaving the thread as it was, where real-time scheduling is not permitted
/// (not root and no `CAP_SYS_NICE`, or an `RLIMIT_RTPRIO` of 0).
@discardableResult
public func makeCurrentThreadUrgent() -> Bool {
    pager_set_thread_fifo(1) == 0
}

/// Whether demand threads run real-time (see ``makeCurrentThreadUrgent()``).
///
/// Measured both ways: with one CPU per "host" (the two-namespace benchmark) real-time demand
/// threads halve the p99 of faults while the push runs; with source, destination and workload
/// sharing two CPUs (`pagerd demo`) they make the whole migration about 50% slower. A woken
/// real-time thread preempts whatever runs on its last CPU instead of moving to an idle one,
/// which throws away parallelism wherever there is a choice of CPU.
public enum DemandPriority: String, Sendable, CaseIterable {
    /// Real-time when this process may run on one CPU only: there is no placement to lose.
    case auto
    /// Always real-time: for hosts whose CPUs are kept busy (a guest's vCPUs), where a fault
    /// must not wait for a time slice.
    case realtime
    /// Never: demand threads are normal threads.
    case normal

    /// Whether demand threads of this process should be real-time.
    public var isRealtime: Bool {
        switch self {
        case .auto: pager_allowed_cpu_count() == 1
        case .realtime: true
        case .normal: false
        }
    }
}

/// Runs `body` as a demand thread (see ``makeCurrentThreadUrgent()``), then makes the calling
/// (normal) thread `SCHED_OTHER` again. With `enabled` false it just runs `body`.
public func withUrgentPriority<T, E: Error>(_ enabled: Bool = true, _ body: () throws(E) -> T) throws(E) -> T {
    let raised = enabled && makeCurrentThreadUrgent()
    defer { if raised { _ = pager_set_thread_fifo(0) } }
    return try body()
}

/// Runs `body` as a normal (`SCHED_OTHER`) thread, then goes back to `SCHED_IDLE`: for a
/// background thread's work under a lock that faults wait for. On other threads it just runs
/// `body` (no system call). If leaving `SCHED_IDLE` is not permitted, `body` runs as it is.
public func withForegroundPriority<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    guard pager_is_background_thread() != 0 else { return try body() }
    let raised = pager_set_thread_idle(0) == 0
    defer { if raised { _ = pager_set_thread_idle(1) } }
    return try body()
}

/// The CPU the calling thread runs on now (`sched_getcpu`).
public func currentCPU() -> Int { Int(pager_current_cpu()) }

/// Number of online CPUs (`sysconf(_SC_NPROCESSORS_ONLN)`).
public func onlineCPUCount() -> Int { max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

/// Runs a child process (a raw `clone`, no atfork handlers) that reads one byte at
/// `address` (if given) and exits, and reaps it. Returns the signal that killed the child
/// (`SIGBUS` for a poisoned page), or 0 if it exited normally.
///
/// With a userfaultfd that asked for `UFFD_EVENT_FORK`, the clone waits until a handler
/// reads the fork event. Used by tests and by `pagerd` self-checks.
public func runTouchingChild(address: UnsafeRawPointer? = nil) throws(KernelError) -> Int32 {
    let r = pager_clone_touch_and_reap(address)
    if r < 0 { throw KernelError("clone", negatedErrno: r) }
    return r
}

/// A mutex whose critical sections run in the foreground even on a background (`SCHED_IDLE`)
/// thread (see ``withForegroundPriority(_:)``): a lock shared between background work (the
/// push) and demand threads must never be held by a thread a busy host does not schedule.
/// On normal threads it is a plain `Mutex`.
public final class ForegroundMutex<Value>: @unchecked Sendable {
    private let mutex: Mutex<Value>
    public init(_ value: sending Value) { mutex = Mutex(value) }
    public func withLock<R>(_ body: (inout sending Value) throws -> sending R) rethrows -> R {
        try withForegroundPriority { () throws -> R in try mutex.withLock(body) }
    }
}
