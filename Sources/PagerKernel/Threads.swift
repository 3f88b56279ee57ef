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
///
/// Sections nest: only the outermost one changes the policy. (Deciding by the background flag
/// alone put the thread back on `SCHED_IDLE` when an inner section, such as a
/// ``ForegroundMutex`` taken inside the switch to post-copy, left: the rest of the outer
/// section, the workload's downtime, then ran at idle priority.)
public func withForegroundPriority<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    guard pager_is_background_thread() != 0 else { return try body() }
    let outermost = pager_enter_foreground() == 0
    let raised = outermost && pager_set_thread_idle(0) == 0
    defer {
        if raised { _ = pager_set_thread_idle(1) }
        pager_leave_foreground()
    }
    return try body()
}

/// A thread's scheduling policy (`sched_getscheduler`), with the kernel's numbering.
public enum SchedulingPolicy: Equatable, Sendable {
    case other, fifo, roundRobin, batch, idle, deadline
    case unknown(Int32)

    init(_ raw: Int32) {
        // The kernel's SCHED_* values (uapi/linux/sched.h); 4 is reserved (SCHED_ISO).
        switch raw {
        case 0: self = .other
        case 1: self = .fifo
        case 2: self = .roundRobin
        case 3: self = .batch
        case 5: self = .idle
        case 6: self = .deadline
        default: self = .unknown(raw)
        }
    }
}

/// The calling thread's scheduling policy (`sched_getscheduler(0)`).
public func currentThreadSchedulingPolicy() throws(KernelError) -> SchedulingPolicy {
    let r = pager_thread_policy()
    if r < 0 { throw KernelError("sched_getscheduler", negatedErrno: r) }
    return SchedulingPolicy(r)
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

/// A value under a lock that threads wait on until it satisfies a condition
/// (`pthread_cond_wait`): a change made with ``change(_:)`` wakes every waiter at once, instead
/// of waiters polling the value on a timer. Critical sections, and waits, run in the
/// foreground as with ``ForegroundMutex``: a background thread woken here holds the lock at
/// normal priority.
public final class WaitableState<Value>: @unchecked Sendable {
    private var value: Value
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        // Deadlines are monotonic (as monotonicNanoseconds()): a wall-clock step moves none.
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Reads or changes the value without waking waiters (for changes none of them waits for).
    public func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        try withForegroundPriority { () throws(E) -> R in
            pthread_mutex_lock(mutex)
            defer { pthread_mutex_unlock(mutex) }
            return try body(&value)
        }
    }

    /// Changes the value and wakes every waiter (`pthread_cond_broadcast`).
    public func change<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        try withForegroundPriority { () throws(E) -> R in
            pthread_mutex_lock(mutex)
            defer {
                pthread_cond_broadcast(condition)
                pthread_mutex_unlock(mutex)
            }
            return try body(&value)
        }
    }

    /// Wakes every waiter without a change here: for waiters whose condition also reads state
    /// kept elsewhere, which just changed. Taking the lock first means no waiter is between
    /// its check and its sleep, so none misses the wake-up.
    public func wakeAll() { change { _ in } }

    /// Blocks until `satisfied` holds for the value (true), or `deadline` (monotonic
    /// nanoseconds) passes first (false); with no deadline, waits as long as it takes.
    public func wait(until satisfied: (Value) -> Bool, deadline: UInt64? = nil) -> Bool {
        withForegroundPriority {
            pthread_mutex_lock(mutex)
            defer { pthread_mutex_unlock(mutex) }
            while !satisfied(value) {
                guard let deadline else {
                    pthread_cond_wait(condition, mutex)
                    continue
                }
                if monotonicNanoseconds() >= deadline { return false }
                var until = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                _ = pthread_cond_timedwait(condition, mutex, &until)
            }
            return true
        }
    }
}
