import Glibc

/// Delivers SIGTERM and SIGINT (and any `also` signals, e.g. SIGUSR1) to a handler on a
/// dedicated thread (`sigwait`), instead of interrupting whatever thread the kernel picks.
/// Call ``start(also:_:)`` before creating other threads, so they inherit the blocked mask.
public enum TerminationSignals {
    /// SIGUSR1: `pagerd source` switches a live region to post-copy on it.
    public static let userSignal1: Int32 = SIGUSR1
    /// SIGSTOP: how a workload process is paused at the switch.
    public static let stop: Int32 = SIGSTOP
    /// SIGCONT: how a workload paused for a switch that never happened runs again.
    public static let resume: Int32 = SIGCONT
    public static func start(also extra: [Int32] = [], _ handler: @escaping @Sendable (Int32) -> Void) throws(KernelError) {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        for s in extra { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let blocked = set
        _ = try KernelThread(name: "signals") {
            var waitSet = blocked
            while true {
                var signal: Int32 = 0
                if sigwait(&waitSet, &signal) == 0 { handler(signal) }
            }
        }
    }
}
