import PagerKernel
import PagerTransport
import PagerWire
import Synchronization

extension SourceServer {
    /// The demand loop: an urgent request is answered before the next frame is read; other
    /// requests (the block around a random fault) wait while more input is already here, so
    /// the next fault's urgent request overtakes them (§4.7's priority: with the block answered
    /// first, a fault under random access waited behind its predecessor's 60 KiB). Ends when
    /// the destination says GOODBYE, or throws when the connection fails (or a resume replaced
    /// it: its socket was then shut down).
    func serveDemand(_ channel: any FrameConnection, session: SourceSession) throws {
        if urgentDemand { makeCurrentThreadUrgent() }
        let sender = PageSender(channel: channel, session: session)
        var waiting: [PageRequest] = []
        while true {
            if !waiting.isEmpty && !channel.inputPending() {
                try answer(waiting.removeFirst(), with: sender, session: session, flags: [])
                continue
            }
            guard case .message(let message) = try channel.receive() else {
                throw SessionError.refuse(.unexpectedMessage, "destinations do not send PAGE_DATA")
            }
            switch message {
            case .pageRequest(let request):
                if request.flags.contains(.urgent) {
                    session.counters.demandRequests.add(1, ordering: .relaxed)
                    try answer(request, with: sender, session: session, flags: .urgent)
                } else {
                    session.counters.prefetchRequests.add(1, ordering: .relaxed)
                    waiting.append(request)
                }
            case .complete(let region, let resident):
                // Nothing more is needed from the region(s): the push skips them from now on.
                for r in regions where region == Message.allRegions || r.id == region { session.markAllSent(r) }
                logger.info("session \(hex(session.id)): destination holds all of region \(region == Message.allRegions ? "all" : "\(region)") (\(resident >> 20) MiB)")
                try channel.send(.completeAck(region: region))
            case .ping(let token, let timestamp):
                try channel.send(.pong(token: token, timestamp: timestamp))
            case .goodbye:
                session.goodbye()
                return
            default:
                throw SessionError.refuse(.unexpectedMessage, "\(message.type) is not expected on the demand channel")
            }
        }
    }

    /// Sends a request's pages, or an ERROR for that request (the session goes on). The push
    /// answers prefetch requests that arrive on its connection with this too.
    func answer(_ request: PageRequest, with sender: PageSender, session: SourceSession, flags: PageDataHeader.Flags) throws {
        guard let region = try servable(request, on: sender.channel, session: session) else { return }
        session.markSent(region, offset: request.offset, length: request.length)
        _ = try sender.send(region, offset: request.offset, length: request.length, requestID: request.requestID,
                            flags: flags, chunk: answerChunk(region, sender))
    }

    /// Answers a prefetch request on the push connection with the pages of its range not sent
    /// yet (§4.7): the rest is on its way (a scan right behind the push asked for what the
    /// push had just sent, and every page came twice: 246,567 duplicates in 262,144).
    func answerUnsent(_ request: PageRequest, with sender: PageSender, session: SourceSession) throws {
        guard let region = try servable(request, on: sender.channel, session: session) else { return }
        let size = UInt64(region.pageSize)
        for run in session.claimUnsent(region, in: Int(request.offset / size)..<Int((request.offset + request.length) / size)) {
            _ = try sender.send(region, offset: UInt64(run.lowerBound) * size, length: UInt64(run.count) * size, requestID: request.requestID,
                                flags: [], chunk: answerChunk(region, sender))
        }
    }

    /// An answer's frames: as large as the peer accepts, less room for the frame's fields.
    private func answerChunk(_ region: ServedRegion, _ sender: PageSender) -> Int {
        max(region.pageSize, Int(sender.channel.sendLimit) - 64 << 10)
    }

    /// The region a request names, once it is checked and the source may release pages; nil
    /// when an ERROR for the request was sent instead.
    private func servable(_ request: PageRequest, on channel: any FrameConnection, session: SourceSession) throws -> ServedRegion? {
        guard let region = regions.first(where: { $0.id == request.region }) else {
            try channel.send(.error(ProtocolError(code: .unknownRegion, requestID: request.requestID,
                message: "region \(request.region) is not served (served: \(regions.map { "\($0.id)" }.joined(separator: ", ")))")))
            return nil
        }
        if let problem = region.check(offset: request.offset, length: request.length) {
            var e = problem
            e.requestID = request.requestID
            try channel.send(.error(e))
            return nil
        }
        guard waitUntilReleased(session) else { throw ChannelError.closed(peer: channel.peer) }
        return region
    }
}
