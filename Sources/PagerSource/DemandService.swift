import PagerKernel
import PagerTransport
import PagerWire
import Synchronization

extension SourceServer {
    /// The demand loop: every request is answered before the next is read. Ends when the
    /// destination says GOODBYE, or throws when the connection fails (or a resume replaced
    /// it: its socket was then shut down).
    func serveDemand(_ channel: any FrameConnection, session: SourceSession) throws {
        if urgentDemand { makeCurrentThreadUrgent() }
        let sender = PageSender(channel: channel, session: session)
        while true {
            guard case .message(let message) = try channel.receive() else {
                throw SessionError.refuse(.unexpectedMessage, "destinations do not send PAGE_DATA")
            }
            switch message {
            case .pageRequest(let request):
                let urgent = request.flags.contains(.urgent)
                if urgent {
                    session.counters.demandRequests.add(1, ordering: .relaxed)
                } else {
                    session.counters.prefetchRequests.add(1, ordering: .relaxed)
                }
                try answer(request, with: sender, session: session, flags: urgent ? .urgent : [])
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
        let channel = sender.channel
        guard let region = regions.first(where: { $0.id == request.region }) else {
            try channel.send(.error(ProtocolError(code: .unknownRegion, requestID: request.requestID,
                message: "region \(request.region) is not served (served: \(regions.map { "\($0.id)" }.joined(separator: ", ")))")))
            return
        }
        if let problem = region.check(offset: request.offset, length: request.length) {
            var e = problem
            e.requestID = request.requestID
            try channel.send(.error(e))
            return
        }
        guard waitUntilReleased(session) else { throw ChannelError.closed(peer: channel.peer) }
        session.markSent(region, offset: request.offset, length: request.length)
        _ = try sender.send(region, offset: request.offset, length: request.length, requestID: request.requestID,
                            flags: flags, chunk: max(region.pageSize, Int(channel.sendLimit) - 64 << 10))
    }
}
