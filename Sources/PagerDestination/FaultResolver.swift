import Logging
import PagerCore
import PagerKernel
import PagerTransport
import PagerWire
import Synchronization
import SystemPackage

/// Resolves the userfaultfd faults of one workload's region by fetching pages from a source.
///
/// Rooms: this file holds the configuration, the shared state and the lifecycle; the fault
/// loop's decisions are in FaultDecisions.swift, installing in Installer.swift, receiving in
/// Receiver.swift (huge pages assembled by ``UnitAssembly``), the workload's prefetch hints in
/// HintChannel.swift.
///
/// Threads: the caller's thread reads userfaultfd events and sends requests (urgent on the
/// demand channel, prefetch on the push channel); one receiver thread per channel installs
/// PAGE_DATA. All installs and all event reads happen under one lock, so no install can land
/// between reading a REMOVE/UNMAP event and recording it (the kernel zaps the range right
/// after the event is read; an install after the zap would resurrect stale data).
public final class FaultResolver: @unchecked Sendable {
    /// How a resolver runs; fixed when it is made.
    public struct Configuration: Sendable {
        /// Prefetch around faults (off: fetch exactly the faulting page).
        public var prefetch = true
        /// The push (and the install of staged pages) runs as a background thread that only
        /// uses idle CPU (true), or competes fairly (false): right where the workload itself
        /// keeps the CPUs busy, e.g. a guest's vCPUs under TCG, which would otherwise starve it.
        public var backgroundPush = true
        /// The fault loop and the demand receiver run as real-time threads (`SCHED_FIFO` 1,
        /// see ``makeCurrentThreadUrgent()``), so a fault never waits for a busy CPU's slice.
        public var urgentDemand = DemandPriority.auto.isRealtime
        /// Pages received by pre-copy before the switch: installed from local memory, never
        /// fetched again (see ``StagedPages``).
        public var staged: StagedPages?
        /// Ids of every region the source serves; those other than ours are declined at once.
        public var otherRegions: [UInt32] = []
        /// A source silent this long while pages are outstanding is lost: the connections are
        /// resumed (with a ``resumer``) or its pages are poisoned. After 250 ms of silence the
        /// destination pings it; a live source answers at once.
        public var stallTimeoutMilliseconds = 10_000
        /// Reconnects and resumes the session when its connections are lost (see
        /// ``SessionResumer``); nil: a lost connection fails the migration at once.
        public var resumer: (any SessionResumer)?
        /// How long faults wait for a resume before the missing pages are poisoned.
        public var reconnectTimeoutMilliseconds = 60_000
        /// The workload's handoff connection: when it closes, the workload is gone and the
        /// migration ends without error (the memory it would have received no longer exists).
        /// It may also carry prefetch hints (see ``PrefetchHint``).
        public var workloadConnection: FileDescriptor?
        /// The handoff's guard (``Handoff/guardMissingPages()``): when the resolver has poisoned
        /// what is missing, it records that there, so the guard does not walk the memory again.
        public var poisonGuard: PoisonGuard?
        /// Counters for the status query and the metrics, kept as the migration runs.
        public var progress: MigrationProgress?
        /// One-sided reads of the source's memory (RDMA): faults are read there first.
        public var pageReads: (any PageReads)?
        /// READs of the push's PUSH_READ ranges (RDMA, the push queue pair): every range is
        /// taken (what cannot be posted yet is queued there); one handed back could not be
        /// read at all and comes over TCP.
        public var pushReads: (any PageReads)?
        /// The session negotiated `rdma`: RDMA_KEY frames are expected even where no reads
        /// could be set up (they are then ignored, and every page comes over TCP).
        public var rdmaNegotiated = false

        public init() {}
    }

    /// Where a migration is. Connection errors are failures only while `fetching`.
    enum Phase {
        /// Pages are outstanding, or COMPLETE is not acknowledged yet. `pushComplete`: the
        /// source has pushed every page of the region (what is still missing is swept up).
        case fetching(pushComplete: Bool)
        /// GOODBYE sent: errors on the connections from here on are the expected close.
        case closing
        case failed(ResolveError)
    }

    struct State {
        var pages: RegionPages
        var planner: PrefetchPlanner
        var faults: WaitingFaults
        /// The connections in use (replaced by a resume).
        var link: Link
        var report = ResolveReport()
        var phase = Phase.fetching(pushComplete: false)
        /// Units (pages of the mapping size) wholly staged by pre-copy and not yet installed.
        var stagedUnits: PageBitmap?
        /// Pings sent during the current silence of the source.
        var pingsSent: UInt64 = 0
        /// Ranges installed without waking (`DONTWAKE`) because a known fault waits on them:
        /// woken once the lock is released. Otherwise the woken workload thread can preempt
        /// the installer (the push receiver runs as SCHED_IDLE) while it holds the lock, and the
        /// fault thread then waits on a lock held by a thread that cannot run: an inversion.
        var pendingWakes: [AddressRange] = []
        /// Faults wait on pages asked for only as prefetch: poll often, to escalate them.
        var slowFaults = false
        /// Pages that went back to missing after the source sent them (an install retried):
        /// the source answers a prefetch on the push channel with only what it has not sent
        /// (§4.7), so these are asked for with a plain request (``prefetchRequests(_:_:)``).
        var refetch: PageBitmap

        var failure: ResolveError? {
            if case .failed(let e) = phase { return e }
            return nil
        }

        /// Records why the migration stops; the first reason wins, and none once closing.
        mutating func fail(_ error: ResolveError) {
            if case .fetching = phase { phase = .failed(error) }
        }

        var pushComplete: Bool {
            if case .fetching(true) = phase { return true }
            return false
        }

        func isStaged(_ page: Int) -> Bool { stagedUnits?.contains(page) == true }

        mutating func takeWakes() -> [AddressRange] {
            defer { pendingWakes.removeAll(keepingCapacity: true) }
            return pendingWakes
        }
    }

    /// What the fault loop waits for besides events: the end of the receivers and the source's
    /// COMPLETE_ACK (a condition, so the waiter wakes at once).
    struct Endings {
        /// Receiver threads (of every generation of connections) still running.
        var receiversRunning = 0
        var completeAcknowledged = false
        /// The demand receiver stopped: no COMPLETE_ACK can come any more.
        var demandClosed = false
    }

    let uffd: Userfaultfd
    let region: RegionDescriptor
    let configuration: Configuration
    let logger: Logger
    /// The mapping's page size: the unit of every install.
    let unit: Int
    /// Every install and every event read, in the foreground even on the push and staged
    /// threads (see ForegroundMutex): a fault never waits behind a starved lock holder.
    let lock: ForegroundMutex<State>
    let endings = WaitableState(Endings())
    /// Every thread started (receivers of each generation, reconnects): joined at the end.
    let spawned = WaitableState<[KernelThread]>([])
    /// Address translation; changed (remap) under `lock`, by the fault loop only.
    var mappings: MappingTable
    /// Region pages tracked: one past the last page a mapping covers (fixed; remaps move
    /// addresses, not region offsets).
    let trackedPages: Int
    /// When the last frame arrived from the source (any channel), and bytes received: atomics,
    /// so receiving a frame takes no lock before its install.
    let lastHeard = Atomic<UInt64>(monotonicNanoseconds())
    /// When the last frame came in on the push channel (see ``WaitingFaults/review``).
    let lastPushFrame = Atomic<UInt64>(monotonicNanoseconds())
    let bytesReceived = Atomic<UInt64>(0)
    /// Threads about to take the lock for a fault (the fault loop, the demand receiver): a
    /// background install ends its lock hold early while one waits (``installRuns``).
    let faultWaitsForLock = Atomic<Int>(0)
    let installer: Installer

    /// - Parameter mappings: where the region's pages live in the workload; one page size.
    /// - Parameter push: the push channel, or nil for demand paging only (no background
    ///   transfer: pages arrive only when touched or prefetched).
    public init(uffd: Userfaultfd, region: RegionDescriptor, mappings: [RegionMapping], demand: any FrameConnection,
                push: (any FrameConnection)?, configuration: Configuration = Configuration(), logger: Logger) throws(ResolveError) {
        // The region against the memory it is to fill, before anything is sized by either.
        do { try Announcement.check(region: region, serves: mappings) } catch { throw .invalidSetup("\(error)") }
        let unit = mappings[0].pageSize
        self.uffd = uffd
        self.region = region
        self.configuration = configuration
        self.logger = logger
        self.unit = unit
        // Only the pages the mappings cover are tracked (the region is exactly as long as their
        // extent, checked above): the bookkeeping is the size of the workload's memory.
        let table = MappingTable(unit: unit, spans: mappings.map { .init(base: $0.base, size: $0.size, regionOffset: $0.regionOffset) })
        self.mappings = table
        trackedPages = table.pageCount
        installer = Installer(unit: unit)
        var pages = RegionPages(pageCount: table.pageCount)
        for gap in table.uncovered { pages.discard(gap) } // never wanted
        // Windows in bytes, as CRIU's lazy-pages: 64 KiB after a fault, growing to 4 MiB.
        let planner = PrefetchPlanner(minWindow: max(1, (64 << 10) / unit), maxWindow: max(1, (4 << 20) / unit))
        var state = State(pages: pages, planner: planner, faults: WaitingFaults(pageCount: pages.pageCount),
                          link: Link(demand: demand, push: push), refetch: PageBitmap(count: pages.pageCount))
        state.report.pages = mappings.reduce(0) { $0 + Int($1.size) / unit }
        state.report.pageSize = unit
        if let progress = configuration.progress {
            progress.pages.store(state.report.pages, ordering: .relaxed)
            progress.pageSize.store(unit, ordering: .relaxed)
            progress.stagedBytes.store(UInt64(configuration.staged?.stagedBytes ?? 0), ordering: .relaxed)
        }
        lock = ForegroundMutex(state)
    }

    // MARK: Lifecycle

    /// Resolves faults until every page is local (then unregisters the memory and completes
    /// the session) or the migration fails (then poisons every page not yet local and throws).
    public func run() throws(ResolveError) -> ResolveReport {
        try withUrgentPriority(configuration.urgentDemand) { () throws(ResolveError) -> ResolveReport in
            do throws(ResolveError) {
                configuration.progress?.enter(.postcopyActive)
                let report = try resolve()
                publish(report)
                configuration.progress?.enter(.completed)
                return report
            } catch {
                // Every way out but success leaves nothing missing unpoisoned: poisoned here,
                // or, on a kernel that cannot poison, out of reach with its owner, whom the
                // guard stops.
                let poisoned: Int
                if PoisonGuard.kernelCanPoison {
                    poisoned = poisonOutstanding()
                    configuration.poisonGuard?.recordPoisoned(pages: poisoned)
                } else {
                    poisoned = configuration.poisonGuard?.poisonMissing() ?? 0
                    if let guarded = configuration.poisonGuard {
                        let pid = guarded.owner.map(String.init) ?? "unknown"
                        if let failure = guarded.ownerStopFailure {
                            logger.critical("this kernel cannot poison pages (no UFFDIO_POISON), and the workload (pid \(pid)) could not be killed (\(failure)): its userfaultfd stays open while this daemon runs, so its faults wait instead of reading zeros")
                        } else {
                            logger.error("this kernel cannot poison pages (no UFFDIO_POISON): the workload (pid \(pid)) was killed rather than let it read zeros where pages could not be fetched")
                        }
                    }
                }
                if let progress = configuration.progress {
                    publish(lock.withLock { $0.report })
                    progress.pagesPoisoned.store(poisoned, ordering: .relaxed)
                    progress.enter(.failed)
                }
                throw error
            }
        }
    }

    private func resolve() throws(ResolveError) -> ResolveReport {
        let started = monotonicNanoseconds()
        let first = lock.withLock { $0.link }
        // Regions of the source this destination does not map: nothing is needed from them.
        for other in configuration.otherRegions where other != region.id {
            do { try first.demand.send(.complete(region: other, residentBytes: 0)) } catch { throw .channel(error) }
        }
        try startStaged()
        try startReads()
        startReceivers(first.demand, first.push, generation: first.generation)
        var finishedCleanly = false
        defer {
            if finishedCleanly {
                // After GOODBYE the source closes both connections; wait for that (bounded) so
                // neither side resets a connection with data still unread.
                _ = endings.wait(until: { $0.receiversRunning == 0 }, deadline: monotonicNanoseconds() + 2_000_000_000)
            }
            stopThreads()
        }
        let ending = try faultLoop()
        if ending == .workloadGone {
            logger.info("the workload closed its handoff connection: it is gone, the migration ends with \(lock.withLock { $0.pages.outstandingCount }) pages never fetched")
        } else {
            complete()
        }
        lock.withLock {
            $0.phase = .closing
            $0.report.pagesNeverFetched = (ending == .workloadGone ? $0.pages.outstandingCount : 0) + $0.report.pagesUnmappedUnfetched
            publish($0.report, pagesLocal: $0.pages.residentCount + $0.pages.discardedCount)
        }
        let last = lock.withLock { $0.link }
        try? last.push?.send(.goodbye)
        try? last.demand.send(.goodbye)
        finishedCleanly = true
        var report = lock.withLock { $0.report }
        report.bytesReceived = bytesReceived.load(ordering: .relaxed)
        if let reads = configuration.pageReads {
            report.reads = reads.readsCompleted
            report.readBytes = UInt64(reads.bytesRead)
        }
        if let reads = configuration.pushReads {
            report.pushReads = reads.readsCompleted
            report.pushReadBytes = UInt64(reads.bytesRead)
        }
        report.seconds = Double(monotonicNanoseconds() - started) / 1e9
        return report
    }

    /// Starts the staged installer (pre-copy), if any.
    private func startStaged() throws(ResolveError) {
        guard let staged = configuration.staged else { return }
        let units = stageUnits(staged)
        endings.change { $0.receiversRunning += 1 }
        do {
            let thread = try KernelThread(name: "dst-staged") { [self] in
                if configuration.backgroundPush { try? makeCurrentThreadBackground() }
                installStaged(staged, units)
                endings.change { $0.receiversRunning -= 1 }
            }
            spawned.change { $0.append(thread) }
        } catch {
            endings.change { $0.receiversRunning -= 1 }
            throw .kernel(error)
        }
    }

    /// Starts one receiver per connection of `generation`. A thread that cannot be started
    /// loses the connections (a resume may try again).
    func startReceivers(_ demand: any FrameConnection, _ push: (any FrameConnection)?, generation: UInt64) {
        for (channel, role) in [(demand, LinkRole.demand)] + (push.map { [($0, LinkRole.push)] } ?? []) {
            endings.change { $0.receiversRunning += 1 }
            do {
                let thread = try KernelThread(name: role == .push ? "dst-push-rx" : "dst-demand-rx") { [self] in
                    // The push receiver yields to demand work (see makeCurrentThreadBackground);
                    // it installs in the foreground (see receive).
                    if role == .push && configuration.backgroundPush { try? makeCurrentThreadBackground() }
                    if role == .demand && configuration.urgentDemand { makeCurrentThreadUrgent() }
                    receive(channel, role: role, generation: generation)
                    endings.change { $0.receiversRunning -= 1 }
                }
                spawned.change { $0.append(thread) }
            } catch {
                endings.change { $0.receiversRunning -= 1 }
                lock.withLock { $0.fail(.kernel(error)) }
            }
        }
    }

    /// Shuts the current connections down and joins every thread started, reconnects included
    /// (each sees the migration is over and returns).
    private func stopThreads() {
        configuration.pageReads?.stop()
        configuration.pushReads?.stop()
        let last = lock.withLock { $0.link }
        last.demand.shutdown()
        last.push?.shutdown()
        while let thread = spawned.change({ $0.isEmpty ? nil : $0.removeFirst() }) {
            // A resume that completes meanwhile adopts no connection: the phase is over.
            thread.join()
            let now = lock.withLock { $0.link }
            now.demand.shutdown()
            now.push?.shutdown()
        }
    }

    /// Staged units are "in flight" from local memory: never requested from the source.
    private func stageUnits(_ staged: StagedPages) -> PageBitmap {
        lock.withLock { state in
            var units = PageBitmap(count: state.pages.pageCount)
            for u in 0..<units.count where staged.holds(offset: u * unit, length: unit) { _ = units.insert(u) }
            for run in units.runs(in: 0..<units.count) { _ = state.pages.request(run) }
            state.stagedUnits = units
            return units
        }
    }

    /// Every page is here: the workload runs on local memory from now on.
    private func complete() {
        for range in mappings.spans.map({ AddressRange(start: $0.base, length: $0.size) }) {
            do { try uffd.unregister(range) } catch let e where e.errno == .noMemory || e.errno == .invalidArgument {
                // The workload unmapped (part of) the range: there is nothing left to unregister.
                logger.info("\(range) is no longer mapped by the workload: \(e)")
            } catch { logger.error("cannot unregister \(range): \(error)") }
            // Unregistering wakes the faults pending on the range; wake once more anyway, so
            // that no thread that queued a fault around the unregister sleeps on forever (a
            // woken thread simply faults again, now on plain memory).
            do { try uffd.wake(range) } catch { logger.error("cannot wake \(range): \(error)") }
        }
        let link = lock.withLock { $0.link }
        try? link.demand.send(.complete(region: region.id, residentBytes: UInt64(lock.withLock { $0.report.pages }) * UInt64(unit)))
        // The demand receiver takes the COMPLETE_ACK.
        if !endings.wait(until: { $0.completeAcknowledged || $0.demandClosed }, deadline: monotonicNanoseconds() + 5_000_000_000) {
            logger.warning("the source did not acknowledge COMPLETE within 5 s")
        }
    }
}
