import PagerCore
import PagerKernel
import PagerTransport
import PagerWire
import SystemPackage

extension FaultResolver {
    /// How the fault loop ended without error.
    enum LoopEnding { case allLocal, workloadGone }

    /// Requests and pings one pass of the fault loop decided to send, once the lock is released.
    struct Outgoing {
        var urgent: [PageRequest] = []
        /// Prefetch of the block around a random fault: on the demand channel, right behind
        /// the fault's own request (see ``fault(on:_:_:)``).
        var nearby: [PageRequest] = []
        var ahead: [PageRequest] = []
        var ping = false
        /// The source stayed silent past the stall timeout: the connections are lost.
        var silence: ResolveError?
    }

    /// The fault loop: waits for userfaultfd events (and the workload's hints), decides under
    /// the lock what each needs, reviews the waiting faults, and sends the requests. Runs until
    /// every page is local, the workload is gone, or a failure was recorded (thrown).
    func faultLoop() throws(ResolveError) -> LoopEnding {
        var events: [UffdEvent] = []
        events.reserveCapacity(64)
        let hints = configuration.workloadConnection.map { HintChannel($0, logger: logger) }
        while true {
            // 20 ms between housekeeping passes, 1 ms while a fault may need escalating.
            let pollMilliseconds: Int32 = lock.withLock { $0.slowFaults } ? 1 : 20
            let ready: Bool
            do {
                if let hints {
                    let (uffdReady, readable) = try uffd.waitReadable(or: hints.connection, timeoutMilliseconds: pollMilliseconds)
                    ready = uffdReady
                    if readable, try !hints.read(mappings), !uffdReady { return .workloadGone }
                } else {
                    ready = try uffd.waitReadable(timeoutMilliseconds: pollMilliseconds)
                }
            } catch { throw .kernel(error) }
            var out = Outgoing()
            if ready { faultWaitsForLock.add(1, ordering: .relaxed) }
            let pass: (done: Bool, failure: ResolveError?, wakes: [AddressRange], hinted: [PrefetchHint], link: Link) = lock.withLock { state in
                if ready {
                    faultWaitsForLock.subtract(1, ordering: .relaxed)
                    do { try uffd.readEvents(into: &events) } catch let e as KernelError { state.fail(.kernel(e)) } catch {}
                    for event in events { handle(event, &state, &out) }
                }
                review(&state, &out)
                if let hints { requestHinted(hints.takeUnrequested(), &state, &out) }
                sweep(&state, &out)
                watchSilence(&state, &out)
                if configuration.progress != nil { publish(state.report, pagesLocal: state.pages.residentCount + state.pages.discardedCount) }
                return (state.pages.isComplete, state.failure, state.takeWakes(), hints?.takeCompleted(state.pages) ?? [], state.link)
            }
            hints?.answer(pass.hinted)
            wakeAll(pass.wakes)
            if let failure = pass.failure { throw failure }
            if let silence = out.silence { lost(pass.link.generation, silence, resumable: true) }
            // While the connections are down nothing is sent: what this pass requested stays in
            // flight, and the resume asks for it again.
            if pass.link.downSince == nil && out.silence == nil {
                offerToReads(&out)
                do {
                    if out.ping { try pass.link.demand.send(.ping(token: 1, timestamp: monotonicNanoseconds())) }
                    for r in out.urgent { try pass.link.demand.send(.pageRequest(r)) }
                    for r in out.nearby { try pass.link.demand.send(.pageRequest(r)) }
                    for r in out.ahead { try (pass.link.push ?? pass.link.demand).send(.pageRequest(r)) }
                } catch {
                    lost(pass.link.generation, .channel(error), resumable: error.isConnectionLoss)
                }
            }
            if pass.done { return .allLocal }
        }
    }

    /// Decides what an event needs. Under the lock.
    private func handle(_ event: UffdEvent, _ state: inout State, _ out: inout Outgoing) {
        switch event {
        case .pageFault(let address, _, _):
            guard let page = mappings.page(of: address) else {
                logger.warning("fault at \(hex(address)) outside every mapping")
                return
            }
            state.report.faults += 1
            state.faults.note(page: page, at: monotonicNanoseconds())
            fault(on: page, &state, &out)
        case .remove(let start, let end), .unmap(let start, let end):
            for range in mappings.pages(inAddresses: start, end) {
                if case .unmap = event {
                    state.report.pagesUnmappedUnfetched += range.count { ![.resident, .discarded].contains(state.pages.state(of: $0)) }
                }
                state.pages.discard(range)
                state.report.discardedPages += range.count
                state.faults.forget(range)
            }
        case .remap(let from, let to, let length):
            // The workload moved memory (mremap): follow it.
            mappings.remap(from: from, to: to, length: length)
        case .fork(let descriptor):
            // Children are not followed: their copy of the memory resolves nothing. Closing the
            // descriptor makes the kernel unregister it, so the child does not hang.
            logger.warning("workload forked; the child's memory is not paged (its userfaultfd \(descriptor) is closed)")
            try? FileDescriptor(rawValue: descriptor).close()
        case .unknown(let code):
            logger.warning("unknown userfaultfd event \(code)")
        }
    }

    /// Carries out what a fault on `page` needs (see ``FaultAction``).
    private func fault(on page: Int, _ state: inout State, _ out: inout Outgoing) {
        let action = FaultAction.decide(state.pages.state(of: page), staged: state.isStaged(page),
                                        askedUrgently: state.faults.askedUrgently(page), sequentialScan: state.planner.direction != .none)
        switch action {
        case .installZeros:
            install(page..<page + 1, from: .zeros, &state)
        case .installStaged:
            // With the staged units of its aligned 256 KiB block (the background installer
            // yields to the workload's CPU, so neighbours are likely next).
            let block = max(1, (256 << 10) / unit)
            let start = page / block * block
            for run in state.stagedUnits!.runs(in: start..<min(start + block, state.pages.pageCount)) {
                for wanted in state.pages.accept(run) {
                    install(wanted, from: .bytes(configuration.staged!.pointer(offset: wanted.lowerBound * unit)), &state)
                }
            }
        case .askUrgently:
            askUrgently(page..<page + 1, &state, &out)
            state.report.demandRequests += 1
        case .wait:
            break
        case .fetch:
            for run in state.pages.request(page..<page + 1) {
                askUrgently(run, &state, &out)
                state.report.demandRequests += 1
            }
            let plan = state.planner.plan(faultAt: page, pageCount: state.pages.pageCount)
            // A fault off any scan gets the aligned block around it (the planner's minimum
            // window) on the demand channel, answered right after its page: on the push
            // channel it would queue behind push chunks and other prefetch, the workload would
            // fault on the block's pages before they came and ask for each again (measured:
            // 43,551 demand requests for 262,144 pages touched in random order, the push
            // crowded out to 128 pages). A scan's long window ahead stays on the push channel,
            // where it moves the push cursor.
            let nearby = state.planner.direction == .none
            for run in state.pages.request(configuration.prefetch ? plan.ahead : 0..<0) {
                if nearby {
                    state.faults.markUrgent(run) // asked on the demand channel: a fault on it waits
                    out.nearby.append(request(run, .prefetch))
                } else {
                    out.ahead += prefetchRequests(run, &state)
                }
                state.report.prefetchRequests += 1
            }
        }
    }

    private func askUrgently(_ run: Range<Int>, _ state: inout State, _ out: inout Outgoing) {
        state.faults.markUrgent(run)
        out.urgent.append(request(run, .urgent))
    }

    /// One pass over the waiting faults (see ``WaitingFaults/review``): a page that went back
    /// to missing is asked for again; a page asked for only as prefetch is asked for urgently
    /// once its fault has waited a while with the push channel silent.
    private func review(_ state: inout State, _ out: inout Outgoing) {
        let review = state.faults.review(state.pages, now: monotonicNanoseconds(), lastPushFrame: lastPushFrame.load(ordering: .relaxed),
                                         staged: { [stagedUnits = state.stagedUnits] in stagedUnits?.contains($0) == true })
        for page in review.missingAgain {
            for run in state.pages.request(page..<page + 1) { askUrgently(run, &state, &out) }
        }
        for page in review.escalate {
            askUrgently(page..<page + 1, &state, &out)
            state.report.demandRequests += 1
        }
        state.slowFaults = review.slow
    }

    /// Explicit prefetch hints: request what is missing of each, once.
    private func requestHinted(_ ranges: [Range<Int>], _ state: inout State, _ out: inout Outgoing) {
        for range in ranges {
            for run in state.pages.request(range) {
                out.ahead += prefetchRequests(run, &state)
                state.report.hintedPages += run.count
            }
        }
    }

    /// After the push, whatever is still missing (installs that had to be retried) is asked for.
    private func sweep(_ state: inout State, _ out: inout Outgoing) {
        guard state.pushComplete && state.pages.inFlightCount == 0 && !state.pages.isComplete else { return }
        var from = 0
        while let p = state.pages.nextMissing(from: from), p >= from {
            for run in state.pages.request(p..<min(state.pages.pageCount, p + 256)) {
                out.ahead.append(request(run, []))
                state.report.sweepRequests += 1
            }
            from = p + 256
        }
    }

    /// A silent source: ping every 250 ms of silence, and after the stall timeout the
    /// connections are lost (a blackhole, a stopped source): resumed, or the migration fails.
    /// While they are down, the reconnect thread watches the time instead.
    private func watchSilence(_ state: inout State, _ out: inout Outgoing) {
        // Saturating: a receiver may store a time taken after ours.
        let heard = lastHeard.load(ordering: .relaxed), now = monotonicNanoseconds()
        let silent = now > heard ? now - heard : 0
        guard !state.pages.isComplete && state.failure == nil && state.link.downSince == nil else {
            state.pingsSent = 0
            return
        }
        let timeout = configuration.stallTimeoutMilliseconds
        let interval: UInt64 = 250_000_000
        if silent > UInt64(timeout) * 1_000_000 {
            out.silence = .sourceSilent(milliseconds: silent / 1_000_000, timeoutMilliseconds: timeout)
        } else if silent > interval && state.pingsSent < silent / interval {
            state.pingsSent = silent / interval
            out.ping = true
        }
    }

    /// Prefetch requests for `run` on the push channel, where the source sends only pages it
    /// has not sent (§4.7): pages it sent that were lost here since (``State/refetch``) get a
    /// plain request, which is always answered in full. Under the lock.
    private func prefetchRequests(_ run: Range<Int>, _ state: inout State) -> [PageRequest] {
        let lost = state.refetch.runs(in: run)
        guard !lost.isEmpty else { return [request(run, .prefetch)] }
        var out: [PageRequest] = []
        var at = run.lowerBound
        for part in lost {
            if at < part.lowerBound { out.append(request(at..<part.lowerBound, .prefetch)) }
            out.append(request(part, []))
            state.refetch.remove(part)
            at = part.upperBound
        }
        if at < run.upperBound { out.append(request(at..<run.upperBound, .prefetch)) }
        return out
    }

    func request(_ run: Range<Int>, _ flags: PageRequest.Flags) -> PageRequest {
        PageRequest(requestID: UInt32(truncatingIfNeeded: run.lowerBound), region: region.id,
                    offset: UInt64(run.lowerBound * unit), length: UInt64(run.count * unit), flags: flags)
    }
}
