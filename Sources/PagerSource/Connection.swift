import PagerKernel
import PagerTransport
import PagerWire

extension SourceServer {
    /// One connection, on its own thread: the handshake, then the service of its channel
    /// (demand or push), then how it ended, logged and counted.
    func serve(_ channel: FrameChannel) {
        var joined: SourceSession?
        channel.socket.setBufferSizes(4 << 20)
        do {
            switch try handshake(channel) {
            case .demand(let session, let client, let greeting):
                joined = session
                defer {
                    registry.leave(session, demand: true)
                    active.subtract(1, ordering: .relaxed) // added by the handshake
                }
                try welcome(channel, session: session, greeting)
                logger.info("session \(hex(session.id)) from \(channel.peer) (\(client)): demand channel open, \(session.features.contains(.encryption) ? "encrypted" : session.features.contains(.authentication) ? "authenticated, not encrypted" : "NOT authenticated")")
                try serveDemand(channel, session: session)
                logger.info("session \(hex(session.id)) ended cleanly")
            case .push(let session, let greeting):
                joined = session
                defer { registry.leave(session, demand: false) }
                try welcome(channel, session: session, greeting)
                logger.info("session \(hex(session.id)): push channel open from \(channel.peer)")
                try servePush(channel, session: session)
            }
        } catch {
            report(error, on: channel, session: joined)
        }
        channel.socket.shutdown()
    }

    /// Logs and counts how a connection ended, and tells the peer why when that helps it.
    private func report(_ error: any Error, on channel: FrameChannel, session: SourceSession?) {
        // The destination said GOODBYE: whatever breaks while the connections close is expected.
        if session?.saidGoodbye == true, !(error is SessionError) { return }
        switch error {
        case SessionError.refuse(let code, let message):
            logger.warning("\(channel.peer): \(code): \(message)")
            if code == .authenticationFailed { registry.refusedAuthentication() } else { registry.failed() }
            try? channel.send(.error(ProtocolError(code: code, message: message)))
        case ChannelError.closed:
            logger.info("\(channel.peer) disconnected")
        case ChannelError.malformed(_, let wire):
            logger.warning("session with \(channel.peer) ended: \(error)")
            registry.failed()
            try? channel.send(.error(ProtocolError(code: .malformedFrame, message: wire.description)))
        default:
            logger.warning("session with \(channel.peer) ended: \(error)")
            registry.failed()
        }
    }
}
