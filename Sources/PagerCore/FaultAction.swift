/// What a fault on a page needs, decided from the page's state alone: the destination's fault
/// loop carries it out (installs, requests). Pure, so every case is tested without a kernel.
public enum FaultAction: Equatable, Sendable {
    /// Install zeros. For a page the workload dropped (it reads as zeros by the kernel's
    /// rules), and for a page believed resident: either the install raced with the fault (the
    /// zero install finds it present, EEXIST, and just wakes) or the page was removed behind
    /// our back with no event (a hole punched in shared memory, which reads as zeros). A bare
    /// wake would let the thread fault forever.
    case installZeros
    /// Install it now from pre-copy staging (local memory: a copy, not a round trip).
    case installStaged
    /// Asked for only as prefetch, so its reply may be queued behind push data: ask again on
    /// the demand channel (whichever copy arrives second is dropped).
    case askUrgently
    /// On its way already: wait (the review escalates it if the push stalls).
    case wait
    /// Missing: ask for it urgently, with a prefetch window around it.
    case fetch

    /// - Parameters:
    ///   - staged: the page is in flight from local pre-copy staging.
    ///   - askedUrgently: it was asked for on the demand channel already.
    ///   - sequentialScan: the workload scans in order: an in-flight page heads an ordered
    ///     prefetch and arrives next, so asking again would only add a duplicate.
    public static func decide(_ state: RegionPages.State, staged: Bool, askedUrgently: Bool, sequentialScan: Bool) -> FaultAction {
        switch state {
        case .discarded, .resident: .installZeros
        case .inFlight where staged: .installStaged
        case .inFlight where !askedUrgently && !sequentialScan: .askUrgently
        case .inFlight: .wait
        case .missing: .fetch
        }
    }
}
