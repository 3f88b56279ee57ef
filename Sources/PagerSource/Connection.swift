import PagerKernel
import PagerTransport
import PagerWire

extension SourceServer {
    /// One connection, on its own thread: the handshake, then the service of its channel
    /// (demand or push), then how it ended, logged and counted.
    func serve(_ channel: FrameChannel, _ admitted: Admitted) {
        var joined: SourceSession?
        do {
            switch try admittedHandshake(channel, admitted) {
            case .demand(let session, let client, let greeting):
                joined = session
                defer {
                    registry.leave(session, demand: true)
                    active.subtract(1, ordering: .relaxed) // added by the handshake
                }
                try welcome(channel, session: session, greeting)
                logger.info("session \(hex(session.id)) from \(channel.peer) (\(client)): demand channel open, \(session.features.protectionDescription)")
                try serveDemand(channel, session: session)
                logger.info("session \(hex(session.id)) ended cleanly")
            case .push(let session, let greeting):
                joined = session
                defer { registry.leave(session, demand: false) }
                try welcome(channel, session: session, greeting)
                logger.info("session \(hex(session.id)): push channel open from \(channel.peer)")
                try servePush(channel, session: session)
            }
        } catch let failed as HandshakeFailure {
            report(failed, on: channel)
        } catch {
            report(error, on: channel, session: joined)
        }
        channel.socket.shutdown()
    }

    /// The handshake of an admitted connection: frames no larger than a peer that has not
    /// authenticated may send, one deadline for the whole of it, and the connection's place in
    /// the handshake table until it is over. Throws ``HandshakeFailure`` if it failed.
    private func admittedHandshake(_ channel: FrameChannel, _ admitted: Admitted) throws -> Joined {
        let receiveLimit = channel.receiveLimit
        channel.receiveLimit = WireLimits.preAuthenticationMaxPayload
        let joined: Joined
        do { joined = try handshake(channel, deadline: admitted.deadline) } catch {
            throw HandshakeFailure(end: admission.failed(admitted.ticket, error), error: error)
        }
        channel.receiveLimit = receiveLimit
        // Deep kernel buffers for the session only: a flood's connections keep the defaults,
        // so what they send unread costs the kernel little.
        channel.socket.setBufferSizes(4 << 20)
        if !admission.completed(admitted.ticket) {
            // Evicted just as it completed (the session is registered already): its socket is
            // shut down, so WELCOME fails and the session ends as a failed one, as if the peer
            // had vanished. Rare: the evicted are the oldest, and a destination's handshake is
            // one round trip.
            logger.info("\(channel.peer): evicted as its handshake completed")
        }
        return joined
    }

    /// Logs how a handshake that failed ended, and tells the peer why when that helps it.
    private func report(_ failed: HandshakeFailure, on channel: FrameChannel) {
        switch failed.end {
        case .evicted:
            // Counted and, for a flood, logged in summary by the accept loop.
            logger.debug("\(channel.peer): handshake evicted to make room for a newer one")
        case .timedOut:
            logger.warning("handshake ended: \(failed.error)") // the error names the peer
            try? channel.send(.error(ProtocolError(code: .timeout, message: "\(failed.error)")))
        case .abandoned:
            logger.info("\(channel.peer) disconnected during its handshake: \(failed.error)")
        case .refused, .completed:
            report(failed.error, on: channel, session: nil)
        }
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

/// A handshake that failed, with how it ended (for the log and the counters).
struct HandshakeFailure: Error {
    let end: HandshakeEnd
    let error: any Error
}
