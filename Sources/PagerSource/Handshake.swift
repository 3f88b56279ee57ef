import PagerKernel
import PagerTransport
import PagerWire

extension SourceServer {
    /// What a connection is once its HELLO is accepted.
    enum Joined {
        /// A new session: this is its demand connection. `client` is the HELLO's client name.
        case demand(SourceSession, client: String)
        /// The push connection of a session being served.
        case push(SourceSession)
    }

    /// Reads HELLO and checks it: versions, features, a live region's one destination, the
    /// session a push connection resumes. A new session is registered here, before WELCOME
    /// tells the destination its id (its push connection may follow at once). Throws
    /// ``SessionError/refuse(_:_:)`` with the code and message the peer is sent.
    ///
    /// Every frame of the handshake is received by `deadline` (one for the whole of it, from
    /// the accept): a peer that says nothing, or trickles, must not hold a thread for long.
    func handshake(_ channel: FrameChannel, deadline: Deadline) throws -> Joined {
        guard case .message(.hello(let hello)) = try channel.receive(deadline: deadline, waitingFor: "HELLO") else {
            throw SessionError.refuse(.unexpectedMessage, "the first frame must be HELLO")
        }
        guard hello.minVersion <= ProtocolVersion.v1, hello.maxVersion >= ProtocolVersion.v1 else {
            throw SessionError.refuse(.unsupportedVersion,
                "server speaks versions \(ProtocolVersion.supported.lowerBound)-\(ProtocolVersion.supported.upperBound), client offered \(hello.minVersion)-\(hello.maxVersion)")
        }
        channel.sendLimit = hello.maxPayload
        let features = hello.features.intersection([.checksums, .resume, .hugePages, .invalidation])
        guard hello.resumeSession == 0 else {
            guard let session = registry.resume(hello.resumeSession, token: hello.resumeToken) else {
                throw SessionError.refuse(.unexpectedMessage, "no session \(hex(hello.resumeSession)) with that token")
            }
            return .push(session)
        }
        if let live = regions.first(where: { $0.live != nil }) {
            guard features.contains(.invalidation) else {
                throw SessionError.refuse(.unexpectedMessage,
                    "region \(live.id) is live (pre-copy rounds): the destination must offer the invalidation feature (pagerd dest --precopy)")
            }
            guard !live.live!.claim() else {
                throw SessionError.refuse(.unexpectedMessage, "region \(live.id) is live and already migrating to another destination")
            }
        }
        let session = SourceSession(features: features, peer: channel.peer, regions: regions, gate: gate)
        // Active before it is counted: whoever sees the session count grow (QEMUSource waits
        // for sessions > 0 and active == 0) must not see it as already ended. The demand
        // connection's service subtracts it again.
        active.add(1, ordering: .relaxed)
        registry.open(session)
        return .demand(session, client: hello.clientName)
    }

    /// WELCOME (the session's id and resume token), then one REGION per served region.
    func welcome(_ channel: FrameChannel, session: SourceSession) throws(ChannelError) {
        try channel.send(.welcome(Welcome(features: session.features, regionCount: UInt32(regions.count),
                                          session: session.id, resumeToken: session.token)))
        for region in regions { try channel.send(.region(region.descriptor)) }
    }
}
