import PagerKernel
import PagerTransport
import PagerWire
import Synchronization

extension SourceServer {
    /// The push connection: serve queued prefetch requests first, then the next pages not yet
    /// sent, in order from the cursor. A live region's pages go in pre-copy rounds first (see
    /// ``PrecopyRounds``); its PUSH_COMPLETE comes only after the switch.
    func servePush(_ channel: FrameChannel, session: SourceSession) throws {
        let reader = try startPushReader(channel, session: session)
        // Bulk data yields the CPU to demand traffic at once (2 vCPUs here: otherwise a demand
        // request can wait a whole time slice behind the push). The reader stays a normal
        // thread (prefetch requests are wanted soon); this thread's locks are all foreground
        // (ForegroundMutex, WaitableState), so it is never starved while holding one.
        if backgroundPush { try? makeCurrentThreadBackground() }
        channel.socket.setSendBufferSize(pushSendBuffer)
        channel.socket.setUnsentLimit(pushUnsentLimit)
        defer {
            session.close(.pushEnded)
            reader.join()
        }
        var rounds = try PrecopyRounds(regions: regions, session: session, channel: channel, logger: logger)
        try push(PageSender(channel: channel, session: session), session: session, rounds: &rounds)
    }

    /// Reads the push connection on its own thread: prefetch hints, INVALIDATE_ACK, PONG,
    /// PING, GOODBYE. Anything else, or a failure, closes the session.
    private func startPushReader(_ channel: FrameChannel, session: SourceSession) throws(KernelError) -> KernelThread {
        try KernelThread(name: "src-push-rd") { [self] in
            while true {
                do {
                    guard case .message(let m) = try channel.receive() else { break }
                    switch m {
                    case .pageRequest(let r):
                        session.counters.prefetchRequests.add(1, ordering: .relaxed)
                        session.enqueue(r)
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
                } catch {
                    session.close(.pushReceiveFailed)
                    return
                }
            }
        }
    }

    /// The push loop, until the session closes.
    private func push(_ sender: PageSender, session: SourceSession, rounds: inout PrecopyRounds) throws {
        var regionIndex = 0
        var cursor = 0 // in pages of the current region
        while !session.isClosed {
            if let request = session.dequeue() {
                try answer(request, with: sender, session: session, flags: [])
                if let i = regions.firstIndex(where: { $0.id == request.region }) {
                    regionIndex = i
                    cursor = Int((request.offset + request.length) / UInt64(regions[i].pageSize))
                }
                continue
            }
            guard regionIndex < regions.count else {
                session.waitForWork() // everything pushed: only prefetch requests remain possible
                continue
            }
            let region = regions[regionIndex]
            if !waitUntilReleased(session) { break }
            let maxPages = max(1, pushChunk / region.pageSize)
            guard let run = session.claimUnsent(region, from: cursor, maxPages: maxPages) else {
                if rounds.inRound(region) {
                    // A pre-copy round ended: send what was written meanwhile, or switch.
                    try rounds.endRound(region)
                    cursor = 0
                    continue
                }
                try sender.channel.send(.pushComplete(region: region.id, bytes: region.length))
                logger.info("session \(hex(session.id)): pushed all of region \(region.id)")
                regionIndex += 1
                cursor = 0
                continue
            }
            let size = UInt64(region.pageSize)
            let sent = try sender.send(region, offset: UInt64(run.lowerBound) * size, length: UInt64(run.count) * size, requestID: 0,
                                       flags: .push, chunk: pushChunk)
            rounds.count(region, pages: run.count, bytes: sent)
            cursor = run.upperBound
        }
    }
}
