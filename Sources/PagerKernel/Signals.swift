import Glibc

/// Delivers SIGTERM and SIGINT to a handler on a dedicated thread (`sigwait`), instead of
/// interrupting whatever thread the kernel picks. Call ``start(_:)`` before creating other
/// threads, so they inherit the blocked signal mask.
public enum TerminationSignals {
    public static func start(_ handler: @escaping @Sendable (Int32) -> Void) throws(KernelError) {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
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
