import PagerKernel
import PagerTransport
import PagerWire

extension SourceServer {
    /// One connection, on its own thread: the handshake, then the service of its channel
    /// (demand or push) as the session's current connection of that role, then how it ended,
    /// logged and counted, and the session's end if it was its last connection.
    func serve(_ channel: FrameChannel, _ admitted: Admitted) {
        var joined: (session: SourceSession, role: ChannelRole, new: Bool)?
        var generation: UInt64?
        var failure: (any Error)?
        do {
            let greeting: Greeting
            switch try admittedHandshake(channel, admitted) {
            case .demand(let session, let client, let g, let resumed):
                joined = (session, .demand, !resumed)
                greeting = g
                try welcome(channel, session: session, greeting)
                logger.info("session \(hex(session.id)) from \(channel.peer) (\(client)): demand channel \(resumed ? "resumed" : "open"), \(session.features.protectionDescription)")
                if !resumed, session.features.contains(.rdma), let readService, let keys = greeting.authenticator?.keys {
                    readService.open(session: session.id, admissionKey: keys.admissionKey,
                                     regions: regions.filter { $0.live == nil && $0.localMemory != nil },
                                     // This one until it is attached (a queue pair may be quick).
                                     demand: { [weak session] in session.map { $0.currentConnection(.demand) ?? channel } },
                                     held: { [gate] in gate.isHeld })
                }
            case .push(let session, let g):
                joined = (session, .push, false)
                greeting = g
                try welcome(channel, session: session, greeting)
                logger.info("session \(hex(session.id)): push channel open from \(channel.peer)")
            }
            let (session, role, _) = joined!
            channel.socket.setUserTimeout(milliseconds: userTimeoutMilliseconds)
            generation = session.attach(role, channel)
            switch role {
            case .demand:
                try serveDemand(channel, session: session)
                logger.info("session \(hex(session.id)) ended cleanly")
            case .push:
                try servePush(channel, session: session, generation: generation!)
            }
        } catch let failed as HandshakeFailure {
            report(failed, on: channel)
        } catch {
            failure = error
            report(error, on: channel, session: joined?.session)
        }
        channel.socket.shutdown()
        guard let (session, role, new) = joined else { return }
        if let generation {
            leave(session, role, generation, failure)
        } else if new {
            // A new session whose WELCOME failed: it never had a connection to resume.
            session.close(.failed)
            end(session)
        }
    }

    /// Connection `generation` of `session` ended (with `failure`, or cleanly). A lost one
    /// leaves a resumable session open; the last connection to leave waits the linger time
    /// for a resume, and ends the session if none comes.
    private func leave(_ session: SourceSession, _ role: ChannelRole, _ generation: UInt64, _ failure: (any Error)?) {
        if let failure, !session.isClosed, !Self.isResumable(failure, session) { session.close(.failed) }
        guard session.detach(role, generation) else { return }
        if !session.isClosed {
            let seconds = sessionLingerNanoseconds / 1_000_000_000
            logger.warning("session \(hex(session.id)): no connection left; kept \(seconds) s for the destination to resume it")
            if session.linger(until: monotonicNanoseconds() + sessionLingerNanoseconds) { return }
            if !session.isClosed {
                session.close(.lingerExpired)
                registry.lingerExpired()
                logger.warning("session \(hex(session.id)): not resumed within \(seconds) s: ended, its state freed")
            }
        }
        end(session)
    }

    /// The session is over: its counts join the totals, once.
    private func end(_ session: SourceSession) {
        guard registry.end(session) else { return }
        if session.features.contains(.rdma) { readService?.close(session: session.id) }
        active.subtract(1, ordering: .relaxed) // added by the handshake
        session.precopy.sessionEnded(session, logger: logger)
    }

    /// Whether `error` lost a connection of `session` in a way a resume repairs.
    static func isResumable(_ error: any Error, _ session: SourceSession) -> Bool {
        guard session.resumable, let e = error as? ChannelError else { return false }
        return e.isConnectionLoss
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
        if let session, !session.isClosed, Self.isResumable(error, session) {
            logger.warning("session \(hex(session.id)): a connection from \(channel.peer) was lost (\(error)); the session waits for a resume")
            return
        }
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
