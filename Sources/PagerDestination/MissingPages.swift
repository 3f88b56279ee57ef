import PagerKernel

extension Handoff {
    /// From the moment a workload's memory is handed over, this daemon is the only thing that
    /// can make its missing pages arrive. The guard poisons them on every way out that is not
    /// "every page is local" (see ``PoisonGuard``): call `release()` only then, or when the
    /// workload has gone. Install ``PoisonGuard/installFatalSignalHandlers()`` once per
    /// process so that crashes and signals are covered too.
    /// The owner is the process at the other end of the handoff connection (`SO_PEERCRED`):
    /// where the kernel cannot poison, it is the one stopped.
    public func guardMissingPages() -> PoisonGuard {
        PoisonGuard(uffd: uffd, ranges: mappings.map { (range: $0.range, pageSize: $0.pageSize) },
                    owner: try? UnixSocket.peerProcess(connection))
    }
}
