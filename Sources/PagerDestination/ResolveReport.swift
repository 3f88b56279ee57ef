import PagerKernel
import PagerTransport

/// Why a migration stopped before every page arrived.
public enum ResolveError: Error, CustomStringConvertible, Sendable {
    /// The connection to the source failed (the channel's typed error).
    case channel(ChannelError)
    /// The source went silent for the stall timeout while pages were outstanding.
    case sourceSilent(milliseconds: UInt64, timeoutMilliseconds: Int)
    /// The source said it is shutting down.
    case sourceShuttingDown
    /// The source sent something that is not valid here (a page outside the region, an
    /// unexpected message).
    case sourceMisbehaved(String)
    case sourceRefused(String)
    case workloadGone
    case invalidSetup(String)
    case kernel(KernelError)
    /// ``FaultResolver/abort(_:)`` ended it.
    case aborted(String)
    /// The connections were lost and the source refused the resume (the session is gone).
    case resumeRefused(String)
    /// The connections were lost and no resume succeeded within the reconnect window.
    case reconnectTimedOut(seconds: Int, attempts: Int, last: String)

    /// What happened, without what it led to (the poisoning): for the log of an outage that
    /// may be repaired, and for a failure before any handoff, when nothing was poisoned.
    public var cause: String {
        switch self {
        case .channel(let e): "\(e)"
        case .sourceSilent(let ms, let timeout): "no frame from the source for \(ms) ms (stall timeout \(timeout) ms)"
        case .sourceShuttingDown: "source is shutting down"
        case .sourceMisbehaved(let s): s
        case .sourceRefused(let s): "source could not serve a page: \(s)"
        case .workloadGone: "the workload's memory went away (process exited)"
        case .invalidSetup(let s): s
        case .kernel(let e): "\(e)"
        case .aborted(let s): s
        case .resumeRefused(let s): "the connections broke and the source refused to resume the session (\(s))"
        case .reconnectTimedOut(let seconds, let attempts, let last):
            "the connections broke and \(attempts) attempt(s) to resume within \(seconds) s failed (the last: \(last))"
        }
    }

    public var description: String {
        let poisoned = "pages not yet fetched " + PoisonGuard.fateOfMissingPages
        return switch self {
        case .channel, .sourceSilent, .sourceShuttingDown, .sourceMisbehaved, .resumeRefused, .reconnectTimedOut:
            "source lost: \(cause); \(poisoned)"
        case .sourceRefused: "\(cause); \(poisoned)"
        case .workloadGone, .invalidSetup, .kernel: cause
        case .aborted: "\(cause); \(poisoned)"
        }
    }
}

/// What a finished migration did.
public struct ResolveReport: Sendable {
    public var pages = 0
    public var pageSize = 0
    public var faults = 0
    public var demandRequests = 0
    public var prefetchRequests = 0
    public var sweepRequests = 0
    public var installedPages = 0
    public var zeroPages = 0
    public var duplicatePages = 0
    /// Pages installed (data or zeros), by how they came.
    public var arrivals = Arrivals()
    public var discardedPages = 0
    public var bytesReceived: UInt64 = 0
    /// Fault to install, in ns, for every fault the daemon saw.
    public var faultLatencies: [UInt64] = []
    /// Bytes received for regions (or parts of the region) this destination does not map.
    public var otherRegionBytes: UInt64 = 0
    /// Pages requested because of explicit prefetch hints.
    public var hintedPages = 0
    /// Pages still outstanding when the workload went away (0 for a completed migration).
    public var pagesNeverFetched = 0
    /// Of those, pages the workload unmapped (`UFFD_EVENT_UNMAP`) before they were fetched:
    /// it no longer has them, so the migration completes without them.
    public var pagesUnmappedUnfetched = 0
    /// Each time the connections to the source were lost, and how the resume went.
    public var outages: [Outage] = []
    /// One-sided reads (RDMA READ) that brought their pages, their bytes, and the requests
    /// asked for again over TCP after a read did not deliver.
    public var reads = 0
    public var readBytes: UInt64 = 0
    public var readsAskedAgain = 0
    /// The push's READs (PUSH_READ, §4.11a) that brought their pages, and their bytes.
    public var pushReads = 0
    public var pushReadBytes: UInt64 = 0
    public var seconds: Double = 0
}

/// Pages installed by how they came (``ResolveReport/arrivals``): the PAGE_DATA flags of their
/// frame, or staged by pre-copy rounds. Duplicates dropped are not counted.
public struct Arrivals: Sendable, Equatable {
    public var demand = 0
    public var prefetch = 0
    public var push = 0
    public var staged = 0

    subscript(_ arrival: Arrival) -> Int {
        get {
            switch arrival {
            case .demand: demand
            case .prefetch: prefetch
            case .push: push
            case .staged: staged
            }
        }
        set {
            switch arrival {
            case .demand: demand = newValue
            case .prefetch: prefetch = newValue
            case .push: push = newValue
            case .staged: staged = newValue
            }
        }
    }
}
