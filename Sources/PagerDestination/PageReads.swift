import PagerKernel
import PagerTransport
import PagerWire

/// One-sided reads of the source's memory beside the connections (RDMA READ, spec §4.15): the
/// fault loop offers its demand requests here first, and what is not taken goes over TCP as
/// before. Implemented by the RDMA transport (PagerRDMATransport, `RDMA` trait); the resolver
/// knows only this.
public protocol PageReads: AnyObject, Sendable {
    /// Posts what it can of `requests` as READs; returns the rest, to be sent as PAGE_REQUEST.
    func take(_ requests: [PageRequest]) -> [PageRequest]
    /// An RDMA_KEY frame; `regionLength` is the region's length from its REGION frame (nil: the
    /// source never announced it). A key that cannot be used throws: the source misbehaved.
    func grant(region: UInt32, rkey: UInt32, address: UInt64, length: UInt64, regionLength: UInt64?) throws
    /// Runs until ``stop()``. `arrived` gets each completed read's request and its bytes
    /// (valid during the call only); `failed` the requests whose reads did not deliver (a
    /// failed or flushed READ, a lost queue pair): their pages are still missing.
    func serve(arrived: (PageRequest, UnsafeRawBufferPointer) -> Void, failed: ([PageRequest]) -> Void)
    /// Makes ``serve(arrived:failed:)`` return; reads from then on are not taken.
    func stop()
    /// Reads completed with their bytes, and what they brought.
    var readsCompleted: Int { get }
    var bytesRead: Int { get }
}

extension FaultResolver.Configuration {
    /// The session negotiated rdma, or reads were set up for it: RDMA_KEY and PUSH_READ
    /// frames are expected.
    var usesRDMA: Bool { rdmaNegotiated || pageReads != nil || pushReads != nil }
}

extension FaultResolver {
    /// Requests offered to the reads first (urgent before nearby, each in order); the rest
    /// for the demand connection.
    func offerToReads(_ out: inout Outgoing) {
        guard let reads = configuration.pageReads else { return }
        if !out.urgent.isEmpty { out.urgent = reads.take(out.urgent) }
        if !out.nearby.isEmpty { out.nearby = reads.take(out.nearby) }
    }

    /// Starts the threads that install what the reads bring (as the receivers install
    /// PAGE_DATA: the fault reads as demand data, the push's as push data) and ask again over
    /// TCP for what they could not.
    func startReads() throws(ResolveError) {
        for (reads, push) in [(configuration.pageReads, false), (configuration.pushReads, true)] {
            guard let reads else { continue }
            do {
                let thread = try KernelThread(name: push ? "dst-push-reads" : "dst-reads") { [self] in
                    if push && configuration.backgroundPush { try? makeCurrentThreadBackground() }
                    if !push && configuration.urgentDemand { makeCurrentThreadUrgent() }
                    let assembly = UnitAssembly(unit: unit)
                    reads.serve(arrived: { request, bytes in
                        lastHeard.store(monotonicNanoseconds(), ordering: .relaxed)
                        let flags: PageDataHeader.Flags = push ? .push : request.flags.contains(.urgent) ? .urgent : []
                        let header = PageDataHeader(requestID: request.requestID, region: request.region, offset: request.offset,
                                                    length: UInt64(bytes.count), flags: flags, encoding: .raw)
                        bytesReceived.add(UInt64(bytes.count), ordering: .relaxed)
                        wakeAll(deliver(header, bytes, assembly: assembly, forFault: !push))
                    }, failed: { requests in
                        askAgain(requests)
                    })
                }
                spawned.change { $0.append(thread) }
            } catch {
                throw .kernel(error)
            }
        }
    }

    /// A PUSH_READ (§4.11a) for this destination's region: its missing pages put in flight
    /// (a fault on one asks for it urgently as for any page in flight; the final sweep waits
    /// for them) and handed to the push's READs with those in flight already (a prefetch
    /// request the source answered with nothing: the PUSH_READ made them sent; a second copy
    /// is dropped); without the push's READs (no push queue pair here), or when they cannot
    /// read them, asked for over TCP.
    func pushRead(offset: UInt64, length: UInt32) {
        let first = Int(offset / UInt64(unit)), count = Int(UInt64(length) / UInt64(unit))
        let runs = lock.withLock { state -> [Range<Int>] in
            guard case .fetching = state.phase, first < state.pages.pageCount else { return [] }
            let range = first..<min(first + count, state.pages.pageCount)
            _ = state.pages.request(range)
            var runs: [Range<Int>] = []
            for page in range where state.pages.state(of: page) == .inFlight {
                if let last = runs.last, last.upperBound == page { runs[runs.count - 1] = last.lowerBound..<page + 1 } else { runs.append(page..<page + 1) }
            }
            return runs
        }
        guard !runs.isEmpty else { return }
        let requests = runs.map { request($0, []) }
        let rest = configuration.pushReads?.take(requests) ?? requests
        if !rest.isEmpty { askAgain(rest, counted: false) }
    }

    /// Pages a read did not bring: asked for on the demand connection. While the connections
    /// are down they stay in flight, and the resume asks for them again.
    /// `counted`: a read that did not deliver (``ResolveReport/readsAskedAgain``), not a range
    /// no read could take.
    private func askAgain(_ requests: [PageRequest], counted: Bool = true) {
        let link = lock.withLock { state -> Link? in
            guard case .fetching = state.phase, state.link.downSince == nil else { return nil }
            if counted { state.report.readsAskedAgain += requests.count }
            return state.link
        }
        guard let link else { return }
        do {
            for r in requests { try link.demand.send(.pageRequest(r)) }
        } catch {
            lost(link.generation, .channel(error), resumable: error.isConnectionLoss)
        }
    }
}
