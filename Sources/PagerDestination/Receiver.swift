import PagerCore
import PagerKernel
import PagerTransport
import PagerWire

extension FaultResolver {
    /// One channel's receive loop. On the (background) push channel only the receive itself
    /// runs at background priority: everything that takes the lock faults need runs in the
    /// foreground (see ``withForegroundPriority(_:)``).
    ///
    /// A failure of connection `generation` is reported to ``lost(_:_:resumable:)``, which
    /// resumes the session or fails the migration; once a resume replaced the connection,
    /// nothing it still delivers fails anything (data for a page not yet local is still the
    /// source's data and is installed; an error is stale).
    func receive(_ channel: any FrameConnection, role: LinkRole, generation: UInt64) {
        defer { if role == .demand { endings.change { $0.demandClosed = true } } }
        let assembly = UnitAssembly(unit: unit)
        var wakes = DeferredWakes()
        defer { wakeAll(wakes.take()) }
        while true {
            // Waiters are woken once nothing more is here to install (or after 512 KiB): a
            // woken workload preempts this thread (the push receiver runs at background
            // priority) and, scanning, faults on the next frame's pages microseconds later. Woken
            // per frame, a scan behind the push advanced one run between zero pages per wake-up
            // (60,852 faults for 1 GiB read in order, the push at a quarter of its speed).
            if wakes.due || (!wakes.isEmpty && !channel.inputPending()) { wakeAll(wakes.take()) }
            let incoming: Incoming
            do {
                incoming = try channel.receive()
            } catch {
                if case .peerError(_, let e) = error, e.code == .shuttingDown {
                    lost(generation, .sourceShuttingDown, resumable: false)
                } else {
                    lost(generation, .channel(error), resumable: error.isConnectionLoss)
                }
                return
            }
            guard handle(incoming, role: role, generation: generation, assembly, &wakes) else { return }
        }
    }

    /// Wake-ups of installed pages held back while more frames are already here.
    struct DeferredWakes {
        private var ranges: [AddressRange] = []
        private var bytes: UInt64 = 0
        /// Held back this much already: wake now, or a long stream would starve the waiters.
        static let limit: UInt64 = 512 << 10

        var isEmpty: Bool { ranges.isEmpty }
        var due: Bool { bytes >= Self.limit }

        mutating func add(_ r: [AddressRange], installed: UInt64) {
            ranges += r
            if !ranges.isEmpty { bytes += installed }
        }

        mutating func take() -> [AddressRange] {
            defer { ranges.removeAll(keepingCapacity: true); bytes = 0 }
            return ranges
        }
    }

    /// Handles one received frame; false when the channel must stop (the reason is recorded).
    private func handle(_ incoming: Incoming, role: LinkRole, generation: UInt64, _ assembly: UnitAssembly,
                        _ wakes: inout DeferredWakes) -> Bool {
        let now = monotonicNanoseconds()
        lastHeard.store(now, ordering: .relaxed)
        if role == .push { lastPushFrame.store(now, ordering: .relaxed) }
        func misbehaved(_ error: ResolveError) -> Bool {
            lost(generation, error, resumable: false)
            return false
        }
        switch incoming {
        case .pageData(let header, _) where header.region != region.id:
            // Another region of the source's: this destination does not map it (it said so
            // with COMPLETE, but data may already have been on the way). A region the source
            // never announced is a lie, not a race.
            guard configuration.otherRegions.contains(header.region) else {
                return misbehaved(.sourceMisbehaved("PAGE_DATA for region \(header.region), which the source did not announce"))
            }
            lock.withLock { $0.report.otherRegionBytes += header.length }
        case .pageData(let header, let data):
            guard fits(header.offset, header.length, within: region.length) else {
                return misbehaved(.sourceMisbehaved("PAGE_DATA for region \(header.region) at \(hex(header.offset))+\(hex(header.length)) is not in region \(region.id) (\(hex(region.length)) bytes)"))
            }
            bytesReceived.add(UInt64(data.count), ordering: .relaxed)
            wakes.add(deliver(header, data, assembly: assembly, forFault: role == .demand), installed: header.length)
            // A demand fault's own page: its thread runs now, with what came before it.
            if header.flags.contains(.urgent) { wakeAll(wakes.take()) }
        case .message(.pushComplete(let r, _)) where r == region.id:
            // Not from replaced connections: a resumed push sends the region again.
            lock.withLock { if case .fetching = $0.phase, $0.link.generation == generation { $0.phase = .fetching(pushComplete: true) } }
        case .message(.pushComplete):
            break // a region this destination declined
        case .message(.completeAck(let r)) where r == region.id:
            endings.change { $0.completeAcknowledged = true }
        case .message(.completeAck):
            break // for a region this destination declined
        case .message(.pushRead(let r, _, _)) where r != region.id:
            // Another region of the source's: announced (else a lie), not mapped here.
            guard configuration.otherRegions.contains(r), configuration.usesRDMA, role == .push else {
                return misbehaved(.sourceMisbehaved("PUSH_READ for region \(r), which the source did not announce\(configuration.usesRDMA ? "" : " (and rdma was not negotiated)")"))
            }
        case .message(.pushRead(_, let offset, let length)):
            guard configuration.usesRDMA, role == .push else {
                return misbehaved(.sourceMisbehaved("PUSH_READ \(configuration.usesRDMA ? "on the demand channel" : "but the session did not negotiate rdma")"))
            }
            guard fits(offset, UInt64(length), within: region.length), offset % region.pageSize == 0, UInt64(length) % region.pageSize == 0 else {
                return misbehaved(.sourceMisbehaved("PUSH_READ at \(hex(offset))+\(hex(UInt64(length))) is not whole pages of region \(region.id) (\(hex(region.length)) bytes, \(region.pageSize >> 10) KiB pages)"))
            }
            pushRead(offset: offset, length: length)
        case .message(.rdmaKey(let r, _, _, _)) where r != region.id:
            // Another region of the source's: announced (else a lie), not mapped here.
            guard configuration.otherRegions.contains(r) else {
                return misbehaved(.sourceMisbehaved("RDMA_KEY for region \(r), which the source did not announce"))
            }
        case .message(.rdmaKey(let r, let rkey, let address, let length)):
            guard configuration.usesRDMA else {
                return misbehaved(.sourceMisbehaved("RDMA_KEY for region \(r), but the session did not negotiate rdma"))
            }
            // Both queue pairs read with it (one protection domain per session). A session
            // whose queue pairs this side could not set up goes on over TCP: the key is unused.
            do {
                for reads in [configuration.pageReads, configuration.pushReads].compactMap({ $0 }) {
                    try reads.grant(region: r, rkey: rkey, address: address, length: length, regionLength: region.length)
                }
            } catch {
                return misbehaved(.sourceMisbehaved("\(error)"))
            }
        case .message(.error(let e)):
            return misbehaved(.sourceRefused("request \(e.requestID): \(e.code): \(e.message)"))
        case .message(.pong):
            break
        case .message(.ping(let token, let timestamp)):
            try? channel(role, generation)?.send(.pong(token: token, timestamp: timestamp)) // either side may ping
        case .message(let other):
            return misbehaved(.sourceMisbehaved("unexpected \(other.type) from the source"))
        }
        return true
    }

    /// The `role` connection of `generation`, if it is still the current one.
    private func channel(_ role: LinkRole, _ generation: UInt64) -> (any FrameConnection)? {
        lock.withLock { state in
            guard state.link.generation == generation else { return nil }
            return role == .demand ? state.link.demand : state.link.push
        }
    }

    /// Installs a PAGE_DATA frame, each of its runs (one for raw and zero frames; the data and
    /// zero runs of a sparse one) in turn: whole units directly, pieces of a unit (a huge page
    /// that the source sent as several zero and data runs) gathered in `assembly` until
    /// complete. Bytes past the last page the mappings cover are not this workload's: they are
    /// dropped. Returns the ranges to wake.
    func deliver(_ header: PageDataHeader, _ data: UnsafeRawBufferPointer, assembly: UnitAssembly, forFault: Bool) -> [AddressRange] {
        var whole: [(units: Range<Int>, source: UnsafeRawPointer?)] = []
        var wakes: [AddressRange] = []
        let arrival = Arrival(header.flags)
        for run in header.runs {
            wakes += deliver(run.range, from: run.dataOffset.map { data.baseAddress! + $0 }, arrival: arrival, assembly: assembly, whole: &whole)
        }
        return installRuns(whole, arrival: arrival, forFault: forFault) + wakes
    }

    /// Installs region bytes `range` from `bytes` (nil: zeros); see ``deliver(_:_:assembly:forFault:)``.
    /// Whole units are gathered in `whole`, for one install of the frame's runs.
    private func deliver(_ range: Range<UInt64>, from bytes: UnsafeRawPointer?, arrival: Arrival, assembly: UnitAssembly,
                         whole: inout [(units: Range<Int>, source: UnsafeRawPointer?)]) -> [AddressRange] {
        var wakes: [AddressRange] = []
        let u = UInt64(unit)
        let tracked = UInt64(trackedPages) * u
        var offset = range.lowerBound
        let end = min(range.upperBound, tracked)
        if end < range.upperBound, bytes != nil {
            let dropped = range.upperBound - max(end, range.lowerBound)
            lock.withLock { $0.report.otherRegionBytes += dropped }
        }
        while offset < end {
            let unitStart = offset / u * u
            if offset == unitStart && end - offset >= u {
                let count = Int((end - offset) / u)
                whole.append((Int(offset / u)..<Int(offset / u) + count, bytes.map { $0 + Int(offset - range.lowerBound) }))
                offset += UInt64(count) * u
                continue
            }
            let pieceEnd = min(end, unitStart + u)
            let piece = bytes.map { $0 + Int(offset - range.lowerBound) }
            let index = Int(offset / u)
            if let whole = assembly.add(unit: index, at: Int(offset - unitStart), length: Int(pieceEnd - offset), from: piece) {
                wakes += installUnits(index..<index + 1, from: whole, arrival: arrival)
            }
            offset = pieceEnd
        }
        return wakes
    }

    /// Installs every staged unit from local memory, 2 MiB at a time, freeing the staging
    /// memory behind it.
    func installStaged(_ staged: StagedPages, _ units: PageBitmap) {
        let chunk = max(1, (2 << 20) / unit)
        for run in units.runs(in: 0..<units.count) {
            for start in stride(from: run.lowerBound, to: run.upperBound, by: chunk) {
                let stopped = lock.withLock { state -> Bool in
                    if case .fetching = state.phase { return false }
                    return true
                }
                if stopped { return }
                let end = min(run.upperBound, start + chunk)
                wakeAll(installUnits(start..<end, from: staged.pointer(offset: start * unit), arrival: .staged))
                // From here these units are no longer staged: one whose install had to be
                // retried (EAGAIN) went back to missing and is fetched from the source, never
                // installed from the memory released below. (Changed under the lock the fault
                // path reads it in.)
                lock.withLock { _ = $0.stagedUnits?.remove(start..<end) }
                staged.release(offset: start * unit, length: (end - start) * unit)
            }
        }
    }
}
