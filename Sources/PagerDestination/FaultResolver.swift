import Logging
import PagerCore
import PagerKernel
import PagerTransport
import PagerWire
import Synchronization
import SystemPackage

/// Why a migration stopped before every page arrived.
public enum ResolveError: Error, CustomStringConvertible, Sendable {
    case sourceLost(String)
    case sourceRefused(String)
    case workloadGone
    case invalidSetup(String)
    case kernel(KernelError)

    public var description: String {
        switch self {
        case .sourceLost(let s): "source lost: \(s); pages not yet fetched were poisoned (the workload gets SIGBUS, never zeros)"
        case .sourceRefused(let s): "source could not serve a page: \(s); the workload was stopped with SIGBUS on missing pages"
        case .workloadGone: "the workload's memory went away (process exited)"
        case .invalidSetup(let s): s
        case .kernel(let e): "\(e)"
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
    public var discardedPages = 0
    public var bytesReceived: UInt64 = 0
    /// Fault to install, in ns, for every fault the daemon saw.
    public var faultLatencies: [UInt64] = []
    /// Bytes received for regions this destination does not map (declined with COMPLETE).
    public var otherRegionBytes: UInt64 = 0
    /// Pages requested because of explicit prefetch hints.
    public var hintedPages = 0
    /// Pages still outstanding when the workload went away (0 for a completed migration).
    public var pagesNeverFetched = 0
    /// Of those, pages the workload unmapped (`UFFD_EVENT_UNMAP`) before they were fetched:
    /// it no longer has them, so the migration completes without them.
    public var pagesUnmappedUnfetched = 0
    public var seconds: Double = 0
}

/// Resolves the userfaultfd faults of one workload's region by fetching pages from a source.
///
/// Threads: the caller's thread reads userfaultfd events and sends requests (urgent on the
/// demand channel, prefetch on the push channel); one receiver thread per channel installs
/// PAGE_DATA. All installs and all event reads happen under one lock, so no install can land
/// between reading a REMOVE/UNMAP event and recording it (the kernel zaps the range right
/// after the event is read; an install after the zap would resurrect stale data).
public final class FaultResolver: @unchecked Sendable {
    private let uffd: Userfaultfd
    private var mappings: [RegionMapping]
    private let region: RegionDescriptor
    private let demand: FrameChannel
    private let push: FrameChannel?
    /// Prefetch around faults (off: fetch exactly the faulting page).
    public var prefetch = true
    /// The push (and the install of staged pages) runs as a background thread that only uses
    /// idle CPU (true), or competes fairly (false): right where the workload itself keeps the
    /// CPUs busy, e.g. a guest's vCPUs under TCG, which would otherwise starve the push.
    public var backgroundPush = true
    /// The fault loop and the demand receiver run as real-time threads (`SCHED_FIFO` 1, see
    /// ``makeCurrentThreadUrgent()``), so a fault never waits for a busy CPU's time slice.
    /// Default: ``DemandPriority/auto`` (see there for when it pays).
    public var urgentDemand = DemandPriority.auto.isRealtime
    /// Pages received by pre-copy before the switch: installed from local memory, never
    /// fetched again (see ``StagedPages``).
    public var staged: StagedPages?
    /// Units (pages of the mapping size) wholly staged and not yet released; set when
    /// ``run()`` starts, changed only under `lock`.
    private var stagedUnits: PageBitmap?
    /// Ids of every region the source serves; the others than ours are declined at the start.
    public var otherRegions: [UInt32] = []
    /// A source silent this long while pages are outstanding is lost (its pages are poisoned).
    /// After a second of silence the destination pings it; a live source answers at once.
    public var stallTimeoutMilliseconds = 10_000
    /// The workload's handoff connection: when it closes, the workload is gone and the
    /// migration ends without error (the memory it would have received no longer exists).
    /// It may also carry prefetch hints (see ``PrefetchHint``).
    public var workloadConnection: FileDescriptor?
    private var hintBuffer: [UInt8] = []
    private var completedHints: [PrefetchHint] = []
    /// Hinted ranges not yet wholly local (touched by the fault thread only).
    private var pendingHints: [PendingHint] = []

    private struct PendingHint {
        var hint: PrefetchHint
        var ranges: [Range<Int>]
        var requested = false
    }
    private let logger: Logger
    private let unit: Int
    /// Every install and every event read, in the foreground even on the push and staged
    /// threads (see ForegroundMutex): a fault never waits behind a starved lock holder.
    private let lock: ForegroundMutex<State>
    /// When the last frame arrived from the source (any channel), and bytes received: atomics,
    /// so receiving a frame takes no lock before its install.
    private let lastHeard = Atomic<UInt64>(monotonicNanoseconds())
    /// When the last frame came in on the push channel (see the escalation in `run`).
    private let lastPushFrame = Atomic<UInt64>(monotonicNanoseconds())
    private let bytesReceived = Atomic<UInt64>(0)
    private let zeroBuffer: UnsafeMutableRawPointer
    /// Pages installed per lock hold: 64 KiB of 4 KiB pages (one UFFDIO_COPY of 16 pages
    /// measured near the best copy rate here), or one huge page.
    private var installBatch: Int { max(1, (64 << 10) / unit) }

    private struct State {
        var pages: RegionPages
        var planner: PrefetchPlanner
        /// Pages asked for on the demand channel; a fault on a page asked for only as prefetch
        /// (queued behind push data) is asked for again, urgently.
        var urgentAsked: PageBitmap
        var faultTimes: [Int: UInt64] = [:]
        var report = ResolveReport()
        var failure: ResolveError?
        var pushComplete = false
        var completeAcknowledged = false
        var zeroPageWorks = true
        /// GOODBYE sent: connection errors from here on are the expected close.
        var finishing = false
        var receiversDone = 0
        /// When the last frame arrived from the source (any channel).
        var pingsSent: UInt64 = 0
        /// Ranges installed without waking (`DONTWAKE`) because a known fault waits on them:
        /// woken once the lock is released. Otherwise the woken workload thread can preempt
        /// the installer (the push receiver runs as SCHED_IDLE) while it holds the lock, and the
        /// fault thread then waits on a lock held by a thread that cannot run: an inversion.
        var pendingWakes: [AddressRange] = []
        /// Faults wait on pages asked for only as prefetch: poll often, to escalate them.
        var slowFaults = false

        mutating func takeWakes() -> [AddressRange] {
            defer { pendingWakes.removeAll(keepingCapacity: true) }
            return pendingWakes
        }
    }

    /// - Parameter mappings: where the region's pages live in the workload; all with one page size.
    /// - Parameter push: the push channel, or nil for demand paging only (no background
    ///   transfer: pages arrive only when touched or prefetched).
    public init(uffd: Userfaultfd, region: RegionDescriptor, mappings: [RegionMapping], demand: FrameChannel,
                push: FrameChannel?, logger: Logger) throws(ResolveError) {
        guard let unit = mappings.first?.pageSize, mappings.allSatisfy({ $0.pageSize == unit }) else {
            throw .invalidSetup("mappings must be non-empty and share one page size")
        }
        guard unit >= Int(region.pageSize), unit % Int(region.pageSize) == 0 else {
            throw .invalidSetup("mapping page size \(unit) is smaller than region \(region.id)'s \(region.pageSize)-byte pages")
        }
        for m in mappings {
            guard m.size > 0, m.size % UInt64(unit) == 0, m.regionOffset % UInt64(unit) == 0, m.base % UInt64(unit) == 0,
                  m.regionOffset <= region.length, m.size <= region.length - m.regionOffset else {
                throw .invalidSetup("mapping \(hex(m.base))+\(hex(m.size)) at region offset \(hex(m.regionOffset)) does not fit region \(region.id) (\(hex(region.length)) bytes, \(unit)-byte pages)")
            }
        }
        self.uffd = uffd
        self.mappings = mappings
        self.region = region
        self.demand = demand
        self.push = push
        self.logger = logger
        self.unit = unit
        zeroBuffer = .allocate(byteCount: unit, alignment: unit)
        zeroBuffer.initializeMemory(as: UInt8.self, repeating: 0, count: unit)
        var pages = RegionPages(pageCount: Int(region.length / UInt64(unit)))
        // Pages of the region that no mapping covers are never wanted.
        var covered = PageBitmap(count: pages.pageCount)
        for m in mappings { covered.insert(Int(m.regionOffset) / unit..<Int(m.regionOffset + m.size) / unit) }
        var i = 0
        while let start = covered.first(false, from: i) {
            let end = covered.first(true, from: start) ?? pages.pageCount
            pages.discard(start..<end)
            i = end
        }
        // Windows in bytes, as CRIU's lazy-pages: 64 KiB after a fault, growing to 4 MiB.
        let planner = PrefetchPlanner(minWindow: max(1, (64 << 10) / unit), maxWindow: max(1, (4 << 20) / unit))
        var state = State(pages: pages, planner: planner, urgentAsked: PageBitmap(count: pages.pageCount))
        state.report.pages = mappings.reduce(0) { $0 + Int($1.size) / unit }
        state.report.pageSize = unit
        lock = ForegroundMutex(state)
    }

    deinit { zeroBuffer.deallocate() }

    // MARK: Running

    /// Resolves faults until every page is local (then unregisters the memory and completes
    /// the session) or the migration fails (then poisons every page not yet local and throws).
    public func run() throws(ResolveError) -> ResolveReport {
        try withUrgentPriority(urgentDemand) { () throws(ResolveError) -> ResolveReport in try resolve() }
    }

    private func resolve() throws(ResolveError) -> ResolveReport {
        let started = monotonicNanoseconds()
        // Regions of the source this destination does not map: nothing is needed from them.
        for other in otherRegions where other != region.id {
            do { try demand.send(.complete(region: other, residentBytes: 0)) } catch { throw .sourceLost("\(error)") }
        }
        var receivers: [KernelThread] = []
        if let staged {
            // Staged units are "in flight" from local memory: never requested from the source.
            var units = PageBitmap(count: lock.withLock { $0.pages.pageCount })
            for u in 0..<units.count where staged.holds(offset: u * unit, length: unit) { _ = units.insert(u) }
            stagedUnits = units
            lock.withLock { state in
                var i = 0
                while let start = units.first(true, from: i) {
                    let end = units.first(false, from: start) ?? units.count
                    _ = state.pages.request(start..<end)
                    i = end
                }
            }
            let stagedUnits = units
            do {
                receivers.append(try KernelThread(name: "dst-staged") { [self] in
                    if backgroundPush { try? makeCurrentThreadBackground() }
                    installStaged(staged, stagedUnits)
                    withForegroundPriority { lock.withLock { $0.receiversDone += 1 } }
                })
            } catch { throw .kernel(error) }
        }
        for channel in [demand, push].compactMap({ $0 }) {
            let background = channel === push
            do {
                receivers.append(try KernelThread(name: background ? "dst-push-rx" : "dst-demand-rx") { [self] in
                    // The push receiver yields to demand work (see makeCurrentThreadBackground);
                    // it installs in the foreground (see receive).
                    if background && backgroundPush { try? makeCurrentThreadBackground() }
                    if !background && urgentDemand { makeCurrentThreadUrgent() }
                    receive(channel)
                })
            } catch { throw .kernel(error) }
        }
        var finishedCleanly = false
        defer {
            if finishedCleanly {
                // After GOODBYE the source closes both connections; wait for that (bounded) so
                // neither side resets a connection with data still unread.
                let deadline = monotonicNanoseconds() + 2_000_000_000
                // Sleep, never poll a descriptor here: this (real-time) thread would spin on a
                // socket the receivers read, and keep them off the CPU.
                while !lock.withLock({ $0.receiversDone == receivers.count }) && monotonicNanoseconds() < deadline {
                    sleepMicroseconds(200)
                }
            }
            demand.socket.shutdown()
            push?.socket.shutdown()
            for r in receivers { r.join() }
        }
        var events: [UffdEvent] = []
        events.reserveCapacity(64)
        var workloadGone = false
        while true {
            let ready: Bool
            // 20 ms between housekeeping passes, 1 ms while a fault may need escalating.
            let pollMilliseconds: Int32 = lock.withLock { $0.slowFaults } ? 1 : 20
            do {
                if let connection = workloadConnection {
                    let (events, readable) = try uffd.waitReadable(or: connection, timeoutMilliseconds: pollMilliseconds)
                    ready = events
                    if readable {
                        // Hints, or EOF: the workload is gone.
                        if let bytes = try UnixSocket.readAvailable(connection, maxBytes: 4096) {
                            if bytes.isEmpty && !events {
                                workloadGone = true
                                break
                            }
                            hintBuffer += bytes
                            takeHints()
                        }
                    }
                } else {
                    ready = try uffd.waitReadable(timeoutMilliseconds: pollMilliseconds)
                }
            } catch { throw .kernel(error) }
            var urgent: [PageRequest] = [], ahead: [PageRequest] = []
            var ping = false
            let status: (done: Bool, failure: ResolveError?, wakes: [AddressRange]) = lock.withLock { state in
                if ready {
                    do { try uffd.readEvents(into: &events) } catch let e as KernelError { state.failure = .kernel(e) } catch {}
                    for event in events { handle(event, &state, &urgent, &ahead) }
                }
                // One pass over the waiting faults:
                // - a page that went back to missing (a retried install) is asked for again;
                // - a page asked for only as prefetch (left alone during a sequential scan, where
                //   it usually arrives next) is asked for urgently once its fault has waited 1 ms
                //   while the push channel has been silent for 1 ms: on a host whose CPUs are all
                //   busy the background push, which answers prefetch, may not run at all. While
                //   push frames keep arriving, the page is on its way.
                let now = monotonicNanoseconds()
                let pushFrame = lastPushFrame.load(ordering: .relaxed)
                let pushStalled = now > pushFrame && now - pushFrame > 1_000_000
                state.slowFaults = false
                for (page, t) in state.faultTimes {
                    switch state.pages.state(of: page) {
                    case .missing:
                        for run in state.pages.request(page..<page + 1) {
                            state.urgentAsked.insert(run)
                            urgent.append(request(run, .urgent, &state))
                        }
                    case .inFlight where !state.urgentAsked.contains(page) && stagedUnits?.contains(page) != true:
                        if now > t && now - t > 1_000_000 && pushStalled {
                            state.urgentAsked.insert(page)
                            urgent.append(request(page..<page + 1, .urgent, &state))
                            state.report.demandRequests += 1
                        } else {
                            state.slowFaults = true
                        }
                    default:
                        break
                    }
                }
                // Explicit prefetch hints: request what is missing of each, once.
                for i in pendingHints.indices where !pendingHints[i].requested {
                    pendingHints[i].requested = true
                    for range in pendingHints[i].ranges {
                        for run in state.pages.request(range) {
                            ahead.append(request(run, .prefetch, &state))
                            state.report.hintedPages += run.count
                        }
                    }
                }
                let local = { (h: PendingHint) in
                    h.ranges.allSatisfy { r in r.allSatisfy { [.resident, .discarded].contains(state.pages.state(of: $0)) } }
                }
                completedHints = pendingHints.filter(local).map(\.hint)
                pendingHints.removeAll(where: local)
                // After the push, whatever is still missing (installs that had to be retried) is asked for.
                if state.pushComplete && state.pages.inFlightCount == 0 && !state.pages.isComplete {
                    var from = 0
                    while let p = state.pages.nextMissing(from: from), p >= from {
                        let runs = state.pages.request(p..<min(state.pages.pageCount, p + 256))
                        for run in runs { ahead.append(request(run, [], &state)); state.report.sweepRequests += 1 }
                        from = p + 256
                    }
                }
                // A silent source: ping after a second, give up after the stall timeout.
                // Saturating: a receiver may store a time taken after ours.
                let heard = lastHeard.load(ordering: .relaxed), checked = monotonicNanoseconds()
                let silent = checked > heard ? checked - heard : 0
                if !state.pages.isComplete && state.failure == nil {
                    if silent > UInt64(stallTimeoutMilliseconds) * 1_000_000 {
                        state.failure = .sourceLost("no frame from the source for \(silent / 1_000_000) ms (stall timeout \(stallTimeoutMilliseconds) ms)")
                    } else if silent > 1_000_000_000 && state.pingsSent < silent / 1_000_000_000 {
                        state.pingsSent = silent / 1_000_000_000
                        ping = true
                    }
                } else {
                    state.pingsSent = 0
                }
                return (state.pages.isComplete, state.failure, state.takeWakes())
            }
            if let connection = workloadConnection {
                for hint in completedHints {
                    try? UnixSocket.send(connection, bytes: Array("{\"prefetched\":{\"base_host_virt_addr\":\(hint.address),\"size\":\(hint.size)}}\n".utf8), descriptors: [])
                }
            }
            completedHints = []
            wakeAll(status.wakes)
            if let failure = status.failure {
                poisonOutstanding()
                throw failure
            }
            do {
                if ping { try demand.send(.ping(token: 1, timestamp: monotonicNanoseconds())) }
                for r in urgent { try demand.send(.pageRequest(r)) }
                for r in ahead { try (push ?? demand).send(.pageRequest(r)) }
            } catch {
                lock.withLock { $0.failure = $0.failure ?? .sourceLost("\(error)") }
                continue
            }
            if status.done { break }
        }
        if workloadGone {
            logger.info("the workload closed its handoff connection: it is gone, the migration ends with \(lock.withLock { $0.pages.outstandingCount }) pages never fetched")
        } else {
            // Every page is here: the workload runs on local memory from now on.
            for m in mappings {
                do { try uffd.unregister(m.range) } catch let e where e.errno == .noMemory || e.errno == .invalidArgument {
                    // The workload unmapped (part of) the range: there is nothing left to unregister.
                    logger.info("\(m.range) is no longer mapped by the workload: \(e)")
                } catch { logger.error("cannot unregister \(m.range): \(error)") }
                // Unregistering wakes the faults pending on the range; wake once more anyway, so
                // that no thread that queued a fault around the unregister sleeps on forever (a
                // woken thread simply faults again, now on plain memory).
                do { try uffd.wake(m.range) } catch { logger.error("cannot wake \(m.range): \(error)") }
            }
            try? demand.send(.complete(region: region.id, residentBytes: UInt64(lock.withLock { $0.report.pages }) * UInt64(unit)))
            let deadline = monotonicNanoseconds() + 5_000_000_000
            // The demand receiver takes the COMPLETE_ACK: sleep until it has (see above).
            while !lock.withLock({ $0.completeAcknowledged }) && monotonicNanoseconds() < deadline {
                sleepMicroseconds(200)
            }
        }
        lock.withLock {
            $0.finishing = true
            $0.report.pagesNeverFetched = (workloadGone ? $0.pages.outstandingCount : 0) + $0.report.pagesUnmappedUnfetched
        }
        try? push?.send(.goodbye)
        try? demand.send(.goodbye)
        finishedCleanly = true
        var report = lock.withLock { $0.report }
        report.bytesReceived = bytesReceived.load(ordering: .relaxed)
        report.seconds = Double(monotonicNanoseconds() - started) / 1e9
        return report
    }

    /// Parses complete lines of hints from the workload's connection.
    private func takeHints() {
        while let newline = hintBuffer.firstIndex(of: 0x0A) {
            let line = Array(hintBuffer[..<newline])
            hintBuffer.removeSubrange(...newline)
            guard !line.isEmpty else { continue }
            guard let hint = PrefetchHint(json: line) else {
                logger.warning("ignoring a malformed message on the handoff connection: \(String(decoding: line.prefix(200), as: UTF8.self))")
                continue
            }
            let end = hint.address &+ hint.size
            guard hint.size > 0, end > hint.address else { continue }
            let u = UInt64(unit)
            let ranges = regionRanges(start: hint.address / u * u, end: (end + u - 1) / u * u).map(\.0)
            logger.info("prefetch hint for \(hex(hint.address))+\(hex(hint.size)) (\(ranges.reduce(0) { $0 + $1.count }) pages)")
            pendingHints.append(PendingHint(hint: hint, ranges: ranges))
        }
        if hintBuffer.count > 1 << 16 { hintBuffer.removeAll() } // no line that long is a hint
    }

    /// Decides what an event needs; runs under the lock.
    private func handle(_ event: UffdEvent, _ state: inout State, _ urgent: inout [PageRequest], _ ahead: inout [PageRequest]) {
        switch event {
        case .pageFault(let address, _, _):
            guard let page = regionPage(of: address) else {
                logger.warning("fault at \(hex(address)) outside every mapping")
                return
            }
            state.report.faults += 1
            if state.faultTimes[page] == nil { state.faultTimes[page] = monotonicNanoseconds() }
            switch state.pages.state(of: page) {
            case .discarded:
                // The workload dropped this page: by the kernel's rules it reads as zeros now.
                installZeros(page..<page + 1, &state)
            case .resident:
                // Either the install raced with this fault (the page is present), or the page was
                // removed behind our back with no event (a hole punched in shared memory, which
                // reads as zeros). Installing zeros settles both: EEXIST in the first case (just
                // wake), zeros in the second. A bare wake would let the thread fault forever.
                installZeros(page..<page + 1, &state)
            case .inFlight where stagedUnits?.contains(page) == true:
                // Staged by pre-copy and not installed yet: install it now from local memory, with
                // the staged units of its aligned 256 KiB block (local pages cost a copy, not a
                // round trip, and the background installer yields to the workload's CPU).
                let block = max(1, (256 << 10) / unit)
                let start = page / block * block
                for run in stagedUnits!.runs(in: start..<min(start + block, state.pages.pageCount)) {
                    for wanted in state.pages.accept(run) {
                        install(wanted, from: staged!.pointer(offset: wanted.lowerBound * unit), &state)
                    }
                }
            case .inFlight where !state.urgentAsked.contains(page) && state.planner.direction == .none:
                // Requested as prefetch, so its reply may be queued behind push data: ask again
                // on the demand channel (whichever copy arrives second is dropped). Not during a
                // sequential scan: there the page heads an ordered prefetch and arrives next.
                state.urgentAsked.insert(page)
                urgent.append(request(page..<page + 1, .urgent, &state))
                state.report.demandRequests += 1
            case .inFlight:
                break
            case .missing:
                for run in state.pages.request(page..<page + 1) {
                    state.urgentAsked.insert(run)
                    urgent.append(request(run, .urgent, &state))
                    state.report.demandRequests += 1
                }
                let plan = state.planner.plan(faultAt: page, pageCount: state.pages.pageCount)
                for run in state.pages.request(prefetch ? plan.ahead : 0..<0) {
                    ahead.append(request(run, .prefetch, &state))
                    state.report.prefetchRequests += 1
                }
            }
        case .remove(let start, let end), .unmap(let start, let end):
            for (range, _) in regionRanges(start: start, end: end) {
                if case .unmap = event {
                    state.report.pagesUnmappedUnfetched += range.count { ![.resident, .discarded].contains(state.pages.state(of: $0)) }
                }
                state.pages.discard(range)
                state.report.discardedPages += range.count
                for p in range { state.faultTimes[p] = nil }
            }
        case .remap(let from, let to, let length):
            // The workload moved memory (mremap): follow it.
            for i in mappings.indices where mappings[i].base >= from && mappings[i].base + mappings[i].size <= from + length {
                mappings[i].base = mappings[i].base - from + to
            }
        case .fork(let descriptor):
            // Children are not followed: their copy of the memory resolves nothing. Closing the
            // descriptor makes the kernel unregister it, so the child does not hang.
            logger.warning("workload forked; the child's memory is not paged (its userfaultfd \(descriptor) is closed)")
            try? FileDescriptor(rawValue: descriptor).close()
        case .unknown(let code):
            logger.warning("unknown userfaultfd event \(code)")
        }
    }

    private func request(_ run: Range<Int>, _ flags: PageRequest.Flags, _ state: inout State) -> PageRequest {
        PageRequest(requestID: UInt32(truncatingIfNeeded: run.lowerBound), region: region.id,
                    offset: UInt64(run.lowerBound * unit), length: UInt64(run.count * unit), flags: flags)
    }

    // MARK: Receiving

    /// Installs every staged unit from local memory, 2 MiB at a time, freeing the staging
    /// memory behind it.
    private func installStaged(_ staged: StagedPages, _ units: PageBitmap) {
        let chunk = max(1, (2 << 20) / unit)
        var i = 0
        while let start = units.first(true, from: i) {
            if withForegroundPriority({ lock.withLock({ $0.failure != nil || $0.finishing }) }) { return }
            let end = min(units.first(false, from: start) ?? units.count, start + chunk)
            installUnits(start..<end, from: staged.pointer(offset: start * unit))
            // From here these units are no longer staged: one whose install had to be retried
            // (EAGAIN) went back to missing and is fetched from the source, never installed
            // from the memory released below. (Changed under the lock the fault path reads it in.)
            lock.withLock { _ in _ = stagedUnits?.remove(start..<end) }
            staged.release(offset: start * unit, length: (end - start) * unit)
            i = end
        }
    }

    /// One channel's receive loop. On the (background) push channel only the receive itself
    /// runs at background priority: everything that takes the lock faults need runs in the
    /// foreground (see ``withForegroundPriority(_:)``).
    private func receive(_ channel: FrameChannel) {
        defer { withForegroundPriority { lock.withLock { $0.receiversDone += 1 } } }
        let assembly = UnitAssembly(unit: unit)
        while true {
            let incoming: Incoming
            do {
                incoming = try channel.receive()
            } catch {
                withForegroundPriority {
                    lock.withLock { state in
                        if !state.finishing && !state.pages.isComplete && state.failure == nil {
                            if case .peerError(_, let e) = error, e.code == .shuttingDown { state.failure = .sourceLost("source is shutting down") }
                            else { state.failure = .sourceLost("\(error)") }
                        }
                    }
                }
                return
            }
            guard handle(incoming, from: channel, assembly) else { return }
        }
    }

    /// Handles one received frame; false when the channel must stop (the reason is recorded).
    private func handle(_ incoming: Incoming, from channel: FrameChannel, _ assembly: UnitAssembly) -> Bool {
        let now = monotonicNanoseconds()
        lastHeard.store(now, ordering: .relaxed)
        if channel === push { lastPushFrame.store(now, ordering: .relaxed) }
        switch incoming {
        case .pageData(let header, _) where header.region != region.id:
            // Another region of the source's: this destination does not map it (it said so
            // with COMPLETE, but data may already have been on the way).
            lock.withLock { $0.report.otherRegionBytes += header.length }
        case .pageData(let header, let data):
            guard header.offset + header.length <= region.length else {
                lock.withLock { $0.failure = .sourceLost("PAGE_DATA for region \(header.region) at \(hex(header.offset))+\(hex(header.length)) is not in region \(region.id) (\(hex(region.length)) bytes)") }
                return false
            }
            bytesReceived.add(UInt64(data.count), ordering: .relaxed)
            deliver(header, data, assembly: assembly)
        case .message(.pushComplete(let r, _)) where r == region.id:
            lock.withLock { $0.pushComplete = true }
        case .message(.pushComplete):
            break // a region this destination declined
        case .message(.completeAck(let r)) where r == region.id:
            lock.withLock { $0.completeAcknowledged = true }
        case .message(.completeAck):
            break // for a region this destination declined
        case .message(.error(let e)):
            lock.withLock { $0.failure = .sourceRefused("request \(e.requestID): \(e.code): \(e.message)") }
            return false
        case .message(.pong):
            break
        case .message(.ping(let token, let timestamp)):
            try? channel.send(.pong(token: token, timestamp: timestamp)) // either side may ping
        case .message(let other):
            lock.withLock { $0.failure = .sourceLost("unexpected \(other.type) from the source") }
            return false
        }
        return true
    }

    /// Installs a PAGE_DATA frame: whole units directly, pieces of a unit (a huge page that the
    /// source sent as several zero and data runs) gathered in `assembly` until complete.
    private func deliver(_ header: PageDataHeader, _ data: UnsafeRawBufferPointer, assembly: UnitAssembly) {
        let u = UInt64(unit)
        var offset = header.offset
        let end = header.offset + header.length
        while offset < end {
            let unitStart = offset / u * u
            if offset == unitStart && end - offset >= u {
                let count = Int((end - offset) / u)
                let source = header.encoding == .zero ? nil : data.baseAddress! + Int(offset - header.offset)
                installUnits(Int(offset / u)..<Int(offset / u) + count, from: source)
                offset += UInt64(count) * u
                continue
            }
            let pieceEnd = min(end, unitStart + u)
            let piece = header.encoding == .zero ? nil : data.baseAddress! + Int(offset - header.offset)
            let index = Int(offset / u)
            if let whole = assembly.add(unit: index, at: Int(offset - unitStart), length: Int(pieceEnd - offset), from: piece) {
                installUnits(index..<index + 1, from: whole)
            }
            offset = pieceEnd
        }
    }

    /// Installs whole units, in batches, taking the lock per batch: a fault (which needs the
    /// lock to read its event) waits for at most one batch, not a whole 2 MiB frame.
    private func installUnits(_ units: Range<Int>, from source: UnsafeRawPointer?) {
        var at = units.lowerBound
        while at < units.upperBound {
            let batch = at..<min(units.upperBound, at + installBatch)
            let wakes = lock.withLock { state in
                let wanted = state.pages.accept(batch)
                state.report.duplicatePages += batch.count - wanted.reduce(0) { $0 + $1.count }
                for run in wanted {
                    install(run, from: source.map { $0 + (run.lowerBound - units.lowerBound) * unit }, &state)
                }
                return state.takeWakes()
            }
            wakeAll(wakes)
            at = batch.upperBound
        }
    }

    // MARK: Installing (always under the lock)

    /// Installs region pages `run` from `source` (nil: zeros), recording latencies.
    private func install(_ run: Range<Int>, from source: UnsafeRawPointer?, _ state: inout State) {
        guard let source else {
            installZeros(run, &state)
            return
        }
        let deferWake = waitedOn(run, state)
        for (address, pages) in destinations(run) {
            if deferWake { state.pendingWakes.append(AddressRange(start: address, length: UInt64(pages.count * unit))) }
            var done = 0
            while done < pages.count {
                let outcome: InstallOutcome
                do {
                    outcome = try uffd.copy(to: address + UInt64(done * unit), from: source + (pages.lowerBound - run.lowerBound + done) * unit,
                                            length: UInt64((pages.count - done) * unit), dontWake: deferWake)
                } catch {
                    state.failure = .kernel(error)
                    return
                }
                done += settle(outcome, pages.lowerBound + done..<pages.upperBound, &state)
            }
        }
        state.report.installedPages += run.count
        recordLatency(run, &state)
    }

    private func installZeros(_ run: Range<Int>, _ state: inout State) {
        let deferWake = waitedOn(run, state)
        for (address, pages) in destinations(run) {
            if deferWake { state.pendingWakes.append(AddressRange(start: address, length: UInt64(pages.count * unit))) }
            var done = 0
            while done < pages.count {
                let at = address + UInt64(done * unit)
                let outcome: InstallOutcome
                do {
                    if state.zeroPageWorks {
                        do {
                            outcome = try uffd.zeroPage(AddressRange(start: at, length: UInt64((pages.count - done) * unit)), dontWake: deferWake)
                        } catch let e where e.errno == .invalidArgument {
                            // UFFDIO_ZEROPAGE is for anonymous memory only; shmem and hugetlbfs get copies of zeros.
                            state.zeroPageWorks = false
                            continue
                        }
                    } else {
                        outcome = try uffd.copy(to: at, from: zeroBuffer, length: UInt64(unit), dontWake: deferWake)
                    }
                } catch {
                    state.failure = .kernel(error)
                    return
                }
                let step = state.zeroPageWorks ? pages.count - done : 1
                let settled = settle(outcome, pages.lowerBound + done..<pages.lowerBound + done + step, &state)
                done += settled
            }
        }
        state.pages.zeroFilled(run)
        state.report.zeroPages += run.count
        recordLatency(run, &state)
    }

    /// Applies an install outcome to the pages tried; returns how many pages it dealt with.
    private func settle(_ outcome: InstallOutcome, _ pages: Range<Int>, _ state: inout State) -> Int {
        switch outcome {
        case .installed(let bytes):
            return max(1, Int(bytes) / unit)
        case .alreadyPresent(let before):
            // The page after `before` bytes is present (it arrived another way): skip it, wake
            // anyone waiting on it.
            let present = pages.lowerBound + Int(before) / unit
            wake(present..<present + 1)
            return Int(before) / unit + 1
        case .retry(let before):
            // The workload's mappings are changing (an event is pending): the rest goes back to
            // missing and is requested again after the event is read. Its waiters are woken so
            // they fault again: their fault events were consumed, and nothing else would wake
            // them (a zero install for a page believed resident records no pending fault).
            let installed = Int(before) / unit
            let rest = pages.lowerBound + installed..<pages.upperBound
            state.pages.invalidate(rest)
            wake(rest)
            return pages.count
        case .targetGone:
            state.failure = .workloadGone
            return pages.count
        }
    }

    /// Whether a fault the daemon has read waits on a page of `run`.
    private func waitedOn(_ run: Range<Int>, _ state: State) -> Bool {
        !state.faultTimes.isEmpty && run.contains { state.faultTimes[$0] != nil }
    }

    private func wakeAll(_ ranges: [AddressRange]) {
        for r in ranges { try? uffd.wake(r) }
    }

    private func recordLatency(_ run: Range<Int>, _ state: inout State) {
        guard !state.faultTimes.isEmpty else { return }
        let now = monotonicNanoseconds()
        for p in run {
            if let t = state.faultTimes.removeValue(forKey: p) { state.report.faultLatencies.append(now - t) }
        }
    }

    private func wake(_ run: Range<Int>) {
        for (address, pages) in destinations(run) {
            try? uffd.wake(AddressRange(start: address, length: UInt64(pages.count * unit)))
        }
    }

    /// When the source is lost: every page not yet local is poisoned, so the workload gets
    /// SIGBUS on it instead of zeros or a hang.
    private func poisonOutstanding() {
        lock.withLock { state in
            for run in state.pages.outstandingRuns() {
                for (address, pages) in destinations(run) {
                    _ = try? uffd.poison(AddressRange(start: address, length: UInt64(pages.count * unit)))
                }
            }
        }
        // Wake every waiter, also those on pages that were local: each faults again and either
        // finds its page or gets SIGBUS; none sleeps on after this daemon is gone.
        for m in mappings { try? uffd.wake(m.range) }
    }

    // MARK: Address translation

    private func regionPage(of address: UInt64) -> Int? {
        for m in mappings where address >= m.base && address < m.base + m.size {
            return Int((m.regionOffset + (address - m.base)) / UInt64(unit))
        }
        return nil
    }

    /// Region page ranges covered by `[start, end)` of the address space.
    private func regionRanges(start: UInt64, end: UInt64) -> [(Range<Int>, UInt64)] {
        var result: [(Range<Int>, UInt64)] = []
        for m in mappings {
            let lo = max(start, m.base), hi = min(end, m.base + m.size)
            guard lo < hi else { continue }
            let first = Int((m.regionOffset + (lo - m.base)) / UInt64(unit))
            let last = Int((m.regionOffset + (hi - m.base) + UInt64(unit) - 1) / UInt64(unit))
            result.append((first..<last, lo))
        }
        return result
    }

    /// Where region pages `run` live: (address of the first page, the pages) per mapping.
    private func destinations(_ run: Range<Int>) -> [(UInt64, Range<Int>)] {
        var result: [(UInt64, Range<Int>)] = []
        for m in mappings {
            let first = Int(m.regionOffset) / unit, last = Int(m.regionOffset + m.size) / unit
            let lo = max(run.lowerBound, first), hi = min(run.upperBound, last)
            if lo < hi { result.append((m.base + UInt64((lo - first) * unit), lo..<hi)) }
        }
        return result
    }
}

/// Gathers the pieces of a unit (a huge page) that arrive in several frames on one channel.
/// The source sends the runs of one request consecutively, but may put a prefetch answer
/// between two push chunks of one huge page: two units are assembled at a time, and an
/// unfinished unit pushed out by a third is dropped (it is fetched again).
final class UnitAssembly {
    /// Two units at a time: the push sends a huge page in several chunks and may answer a
    /// prefetch request (another unit, sent whole) between two of them.
    private var slots: [Slot]
    private let unit: Int

    private struct Slot {
        let buffer: UnsafeMutableRawPointer
        var index = -1
        var filled: PageBitmap
        var lastUse = 0
    }
    private var uses = 0

    init(unit: Int) {
        self.unit = unit
        slots = (0..<2).map { _ in Slot(buffer: .allocate(byteCount: unit, alignment: unit), filled: PageBitmap(count: unit / 4096)) }
    }

    deinit { for s in slots { s.buffer.deallocate() } }

    /// Adds bytes (nil: zeros) at `at` within unit `index`. Returns the unit's bytes when the
    /// unit is whole (valid until the next call); the slot is free again after that.
    func add(unit index: Int, at: Int, length: Int, from source: UnsafeRawPointer?) -> UnsafeRawPointer? {
        uses += 1
        var i = slots.firstIndex { $0.index == index } ?? -1
        if i < 0 {
            // A free slot, else the one untouched longest (its unit stays missing and is
            // asked for again after the push: nothing wrong is ever installed).
            i = slots.indices.min { (slots[$0].index < 0 ? 0 : slots[$0].lastUse + 1) < (slots[$1].index < 0 ? 0 : slots[$1].lastUse + 1) }!
            slots[i].index = index
            slots[i].filled.remove(0..<slots[i].filled.count)
        }
        slots[i].lastUse = uses
        let buffer = slots[i].buffer
        if let source { (buffer + at).copyMemory(from: source, byteCount: length) }
        else { (buffer + at).initializeMemory(as: UInt8.self, repeating: 0, count: length) }
        slots[i].filled.insert(at / 4096..<(at + length) / 4096)
        guard slots[i].filled.population == slots[i].filled.count else { return nil }
        slots[i].index = -1
        return UnsafeRawPointer(buffer)
    }
}
