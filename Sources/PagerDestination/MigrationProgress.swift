import PagerCore
import PagerKernel
import Synchronization

/// One migration's counters while it runs, for the status query and the metrics: written by
/// the resolver next to its report (relaxed atomics: the fault path takes no extra lock, a
/// reader never waits for it), read at any time from any thread.
public final class MigrationProgress: Sendable {
    /// Where the migration is, in the words of QEMU's `query-migrate` status.
    public enum Phase: UInt8, Sendable {
        /// Connecting to the source (faults may already wait).
        case setup = 0
        /// Pre-copy rounds arriving (the workload still runs on the source).
        case active = 1
        case postcopyActive = 2
        /// The connections were lost: faults wait while the session resumes.
        case postcopyPaused = 3
        case completed = 4
        case failed = 5

        public var name: String {
            switch self {
            case .setup: "setup"
            case .active: "active"
            case .postcopyActive: "postcopy-active"
            case .postcopyPaused: "postcopy-paused"
            case .completed: "completed"
            case .failed: "failed"
            }
        }
    }

    public let startedAt = monotonicNanoseconds()
    private let phaseValue = Atomic<UInt8>(Phase.setup.rawValue)
    public let endedAt = Atomic<UInt64>(0)
    public let pages = Atomic<Int>(0)
    public let pageSize = Atomic<Int>(0)
    /// Pages local (installed, zero-filled or dropped by the workload).
    public let pagesLocal = Atomic<Int>(0)
    public let faults = Atomic<Int>(0)
    public let demandRequests = Atomic<Int>(0)
    public let prefetchRequests = Atomic<Int>(0)
    public let installedPages = Atomic<Int>(0)
    public let zeroPages = Atomic<Int>(0)
    public let duplicatePages = Atomic<Int>(0)
    public let bytesReceived = Atomic<UInt64>(0)
    public let stagedBytes = Atomic<UInt64>(0)
    public let outages = Atomic<Int>(0)
    public let resumes = Atomic<Int>(0)
    public let pagesPoisoned = Atomic<Int>(0)
    /// Pages installed by how they came (``Arrivals``).
    public let arrivedByDemand = Atomic<Int>(0)
    public let arrivedByPrefetch = Atomic<Int>(0)
    public let arrivedByPush = Atomic<Int>(0)
    public let arrivedStaged = Atomic<Int>(0)
    public let faultLatency = LatencyHistogram()

    public init() {}

    public var phase: Phase { Phase(rawValue: phaseValue.load(ordering: .acquiring)) ?? .failed }

    /// Moves to `phase`; a finished migration stays finished.
    public func enter(_ phase: Phase) {
        var current = phaseValue.load(ordering: .acquiring)
        while current < Phase.completed.rawValue {
            let (done, now) = phaseValue.compareExchange(expected: current, desired: phase.rawValue, ordering: .acquiringAndReleasing)
            if done {
                if phase == .completed || phase == .failed { endedAt.store(monotonicNanoseconds(), ordering: .releasing) }
                return
            }
            current = now
        }
    }

    /// Milliseconds from the handoff until the end, or until now while it runs.
    public var totalMilliseconds: UInt64 {
        let end = endedAt.load(ordering: .acquiring)
        return ((end == 0 ? monotonicNanoseconds() : end) - startedAt) / 1_000_000
    }

    /// Pages not local yet.
    public var pagesRemaining: Int { max(0, pages.load(ordering: .relaxed) - pagesLocal.load(ordering: .relaxed)) }
}

extension FaultResolver {
    /// Copies the report's counts into the progress (under the lock, where they change).
    func publish(_ report: ResolveReport, pagesLocal: Int? = nil) {
        guard let p = configuration.progress else { return }
        if let pagesLocal { p.pagesLocal.store(pagesLocal, ordering: .relaxed) }
        p.faults.store(report.faults, ordering: .relaxed)
        p.demandRequests.store(report.demandRequests, ordering: .relaxed)
        p.prefetchRequests.store(report.prefetchRequests + report.sweepRequests, ordering: .relaxed)
        p.installedPages.store(report.installedPages, ordering: .relaxed)
        p.zeroPages.store(report.zeroPages, ordering: .relaxed)
        p.duplicatePages.store(report.duplicatePages, ordering: .relaxed)
        p.arrivedByDemand.store(report.arrivals.demand, ordering: .relaxed)
        p.arrivedByPrefetch.store(report.arrivals.prefetch, ordering: .relaxed)
        p.arrivedByPush.store(report.arrivals.push, ordering: .relaxed)
        p.arrivedStaged.store(report.arrivals.staged, ordering: .relaxed)
        p.bytesReceived.store(bytesReceived.load(ordering: .relaxed), ordering: .relaxed)
    }
}
