import PagerKernel
import PagerTransport
import PagerWire
import Synchronization

extension SourceServer {
    /// The push connection: serve queued prefetch requests first, then the next pages not yet
    /// sent, in order from the cursor. A live region's pages go in pre-copy rounds first (see
    /// ``PrecopyRounds``); its PUSH_COMPLETE comes only after the switch. Returns when the
    /// session closes; throws when this connection is lost or replaced by a resume.
    func servePush(_ channel: FrameChannel, session: SourceSession, generation: UInt64) throws {
        // A resumed push connection waits for the lost one's thread to be done: the rounds
        // and the sent pages are the session's, and a map must not be applied while the old
        // push still claims pages (it would count them sent though they never arrive).
        guard session.takePushTurn(generation) else { throw ChannelError.closed(peer: channel.peer) }
        defer { session.releasePushTurn(generation) }
        let reader = try startPushReader(channel, session: session, generation: generation)
        // Bulk data yields the CPU to demand traffic at once (2 vCPUs here: otherwise a demand
        // request can wait a whole time slice behind the push). The reader stays a normal
        // thread (prefetch requests are wanted soon); this thread's locks are all foreground
        // (ForegroundMutex, WaitableState), so it is never starved while holding one.
        if backgroundPush { try? makeCurrentThreadBackground() }
        channel.socket.setSendBufferSize(pushSendBuffer)
        channel.socket.setUnsentLimit(pushUnsentLimit)
        defer {
            channel.shutdown() // wakes the reader
            reader.join()
        }
        let link = PrecopyRounds.Link(channel: channel, generation: generation, session: session, logger: logger)
        try session.precopy.begin(link)
        try push(PageSender(channel: channel, session: session), session: session, link: link)
        if !session.isClosed { throw ChannelError.closed(peer: channel.peer) } // lost or replaced
    }

    /// Reads the push connection on its own thread: prefetch hints, RECEIVED, INVALIDATE_ACK,
    /// PONG, PING, GOODBYE. A lost connection stops this connection's push (the session waits
    /// for a resume); anything unexpected closes the session.
    private func startPushReader(_ channel: FrameChannel, session: SourceSession, generation: UInt64) throws(KernelError) -> KernelThread {
        try KernelThread(name: "src-push-rd") { [self] in
            var received = ReceivedMaps()
            while true {
                do {
                    guard case .message(let m) = try channel.receive() else { break }
                    switch m {
                    case .pageRequest(let r):
                        session.counters.prefetchRequests.add(1, ordering: .relaxed)
                        session.enqueue(r)
                    case .received(let r):
                        try take(r, into: &received, session: session)
                    case .invalidateAck(let sequence, _):
                        session.acknowledge(sequence)
                    case .pong(let token, _):
                        session.ponged(token)
                    case .ping(let t, let ts):
                        try channel.send(.pong(token: t, timestamp: ts))
                    case .goodbye:
                        session.goodbye()
                        return
                    default:
                        logger.warning("session \(hex(session.id)): \(m.type) on the push channel, closing it")
                        session.close(.unexpectedOnPush(m.type))
                        return
                    }
                } catch SessionError.refuse(let code, let message) {
                    logger.warning("session \(hex(session.id)): \(code): \(message)")
                    try? channel.send(.error(ProtocolError(code: code, message: message)))
                    session.close(.failed)
                    return
                } catch {
                    if Self.isResumable(error, session) { session.pushLost(generation) } else { session.close(.pushReceiveFailed) }
                    return
                }
            }
        }
    }

    /// One RECEIVED frame: checked against the region it names, gathered until the frame
    /// without `more`, then the push restarts from the map (§4.13a).
    private func take(_ r: Received, into maps: inout ReceivedMaps, session: SourceSession) throws {
        guard let region = regions.first(where: { $0.id == r.region }) else {
            throw SessionError.refuse(.unknownRegion, "RECEIVED for region \(r.region), which is not served")
        }
        let size = UInt64(region.pageSize)
        for range in r.ranges {
            // The same bounds and alignment as a request's (out-of-range, misaligned).
            if let problem = region.check(offset: range.offset, length: range.length) {
                throw SessionError.refuse(problem.code, "RECEIVED \(problem.message)")
            }
            maps.runs[region.id, default: []].append(Int(range.offset / size)..<Int(range.end / size))
        }
        guard !r.more else { return }
        let held = maps.runs.removeValue(forKey: region.id) ?? []
        let lost = session.applyReceived(region, held: held, staged: r.staged)
        logger.info("session \(hex(session.id)): the destination holds \(held.reduce(0) { $0 + $1.count }) of region \(region.id)'s \(region.pageCount) pages; \(lost) pages (\(UInt64(lost) * UInt64(region.pageSize) >> 10) KiB) sent before were lost in flight; the push sends what is missing")
    }

    /// The push loop, until the session closes or the link's connection is no longer its
    /// push. A RECEIVED map restarts it from the first region (and tells the pre-copy rounds).
    private func push(_ sender: PageSender, session: SourceSession, link: PrecopyRounds.Link) throws {
        let rounds = session.precopy, generation = link.generation
        var regionIndex = 0
        var cursor = 0 // in pages of the current region
        var restarts = session.restarts
        // PUSH_COMPLETE goes once per region on this connection: a prefetch answered after
        // it moves the cursor back into the region, which then has nothing unsent again.
        var completed = Set<UInt32>()
        // The keys sent on this connection ahead of its PUSH_READs (the same connection: the
        // destination has the key before the first READ it is asked to make).
        var keyed: [UInt32: Message] = [:]
        while session.isCurrent(.push, generation) {
            // A map may have been applied before this loop began (the reader runs first): the
            // maps themselves say so, not only a change of `restarts`.
            let maps = session.takeArrivedMaps()
            if session.restarts != restarts || !maps.isEmpty {
                restarts = session.restarts
                regionIndex = 0
                cursor = 0
                completed = [] // the push sends what is missing, and completes again
                for map in maps {
                    if let region = regions.first(where: { $0.id == map.region }) { try rounds.mapArrived(region, staged: map.staged, link) }
                }
            }
            if let request = session.dequeue() {
                if request.flags.contains(.prefetch) {
                    try answerUnsent(request, with: sender, session: session)
                } else {
                    try answer(request, with: sender, session: session, flags: [])
                }
                if let i = regions.firstIndex(where: { $0.id == request.region }) {
                    regionIndex = i
                    cursor = Int((request.offset + request.length) / UInt64(regions[i].pageSize))
                }
                continue
            }
            guard regionIndex < regions.count else {
                // Everything pushed: only prefetch requests (or a resume's map) remain possible.
                session.waitForWork(push: generation, restarts: restarts)
                continue
            }
            let region = regions[regionIndex]
            if rounds.isWaiting(region) {
                // Its switch waits for the destination's map: the other regions go on.
                regionIndex += 1
                cursor = 0
                continue
            }
            if !waitUntilReleased(session) { break }
            let maxPages = max(1, pushChunk / region.pageSize)
            guard let run = session.claimUnsent(region, from: cursor, maxPages: maxPages) else {
                if rounds.inRound(region) {
                    // A pre-copy round ended: send what was written meanwhile, or switch.
                    try rounds.endRound(region, link)
                    cursor = 0
                    continue
                }
                if completed.insert(region.id).inserted {
                    try sender.channel.send(.pushComplete(region: region.id, bytes: region.length))
                    logger.info("session \(hex(session.id)): pushed all of region \(region.id)")
                }
                regionIndex += 1
                cursor = 0
                continue
            }
            let size = UInt64(region.pageSize)
            let sent: UInt64
            if let key = pushKey(region, session: session) {
                if keyed[region.id] != key {
                    try sender.channel.send(key)
                    keyed[region.id] = key
                }
                sent = try sender.offerReads(region, offset: UInt64(run.lowerBound) * size, length: UInt64(run.count) * size,
                                             step: UInt64(pushChunk))
            } else {
                sent = try sender.send(region, offset: UInt64(run.lowerBound) * size, length: UInt64(run.count) * size, requestID: 0,
                                       flags: .push, chunk: pushChunk)
            }
            try rounds.count(region, pages: run.count, bytes: sent, link)
            cursor = run.upperBound
        }
    }
}

extension SourceServer {
    /// The key for leaving `region`'s push to READs: the session negotiated rdma, its push
    /// queue pair is admitted, and the region's pages fit a PUSH_READ (at most 2 MiB).
    func pushKey(_ region: ServedRegion, session: SourceSession) -> Message? {
        guard session.features.contains(.rdma), region.pageSize <= Int(WireLimits.pushReadBytes), let readService else { return nil }
        return readService.pushKey(session: session.id, region: region.id)
    }
}

/// RECEIVED ranges gathered per region until the frame without `more` (§4.13a), in pages.
struct ReceivedMaps {
    var runs: [UInt32: [Range<Int>]] = [:]
}
