import PagerCrypto
import PagerKernel
import PagerTransport
import PagerTrust
import PagerWire

extension SourceServer {
    /// What a connection is once its handshake is accepted.
    enum Joined {
        /// A session's demand connection: a new session's (`resumed` false), or one that
        /// replaces a lost one. `client` is the HELLO's client name.
        case demand(SourceSession, client: String, Greeting, resumed: Bool)
        /// The push connection of an open session (its first, or one that replaces a lost one).
        case push(SourceSession, Greeting)
    }

    /// What the rest of the handshake needs after HELLO (and, with keys, AUTH_RESPONSE)
    /// was accepted: the authenticator, whose AUTH_CONFIRM follows WELCOME and the REGIONs.
    struct Greeting {
        var authenticator: ServerAuthenticator?
        /// This side's write key when the session is encrypted: WELCOME is the first frame sealed.
        var sendKey: [UInt8]?
    }

    /// Reads HELLO and checks it: versions, features, the peer's key (AUTH_CHALLENGE and
    /// AUTH_RESPONSE), a live region's one destination, the session a push connection
    /// resumes. Nothing is created or claimed for the peer before it has authenticated. A
    /// new session is registered here, before WELCOME tells the destination its id (its push
    /// connection may follow at once). Throws ``SessionError/refuse(_:_:)`` with the code and
    /// message the peer is sent.
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
        channel.sendLimit = hello.acceptedPayload
        var features = hello.features.intersection([.checksums, .resume, .hugePages, .invalidation, .sparse])
        var greeting = Greeting()
        if case .keys(let ring) = authentication {
            if requireEncryption && !hello.features.contains(.encryption) {
                throw SessionError.refuse(.authenticationFailed,
                    "this source requires encryption (pagerd source --encrypt): give the destination --encrypt")
            }
            let authenticator = try authenticate(channel, hello: hello, ring: ring, deadline: deadline)
            greeting.authenticator = authenticator
            features.insert(.authentication)
            if hello.features.contains(.encryption) {
                // Sealed from here on: the client's next frame, and ours from WELCOME on (a
                // refusal before WELCOME goes out in the clear, as the client expects).
                let keys = authenticator.keys!
                channel.protectReceives(key: keys.clientWriteKey, limits: recordLimits)
                greeting.sendKey = keys.serverWriteKey
                features.insert(.encryption)
            }
            // Queue pairs are admitted under a key of the handshake's, so never without one;
            // and never with encryption: READ data is not sealed (spec §4.15).
            if readService != nil && hello.features.contains(.rdma) && !features.contains(.encryption) { features.insert(.rdma) }
        }
        guard hello.resumeSession == 0 else {
            let session = try resume(hello, authenticated: greeting.authenticator != nil)
            switch hello.channel {
            case .push: return .push(session, greeting)
            case .demand: return .demand(session, client: hello.clientName, greeting, resumed: true)
            }
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
        // for sessions > 0 and active == 0) must not see it as already ended. The connection
        // that ends the session subtracts it again (see SourceServer.leave).
        active.add(1, ordering: .relaxed)
        registry.open(session)
        return .demand(session, client: hello.clientName, greeting, resumed: false)
    }

    /// AUTH_CHALLENGE, then AUTH_RESPONSE verified with the key HELLO names. A resume's
    /// session token is part of the key schedule: a HELLO resuming a session that does not
    /// exist is verified against a random token, so it fails like a wrong key and an
    /// unauthenticated peer learns nothing about which sessions exist.
    private func authenticate(_ channel: FrameChannel, hello: Hello, ring: KeyRing, deadline: Deadline) throws -> ServerAuthenticator {
        var authenticator: ServerAuthenticator
        do { authenticator = try ServerAuthenticator(ring: ring, hello: hello) } catch {
            throw SessionError.refuse(.authenticationFailed, error.description)
        }
        try channel.send(authenticator.challenge())
        guard case .message(.authResponse(let nonce, let share, let mac)) = try channel.receive(deadline: deadline, waitingFor: "AUTH_RESPONSE") else {
            throw SessionError.refuse(.unexpectedMessage, "expected AUTH_RESPONSE after AUTH_CHALLENGE")
        }
        let resuming = hello.resumeSession != 0
        let token = resuming ? (registry.token(of: hello.resumeSession) ?? secureRandomBytes(16)) : [UInt8](repeating: 0, count: 16)
        do {
            try authenticator.verify(clientNonce: nonce, share: share, mac: mac, resumeToken: token, resuming: resuming)
        } catch {
            throw SessionError.refuse(.authenticationFailed, error.description)
        }
        return authenticator
    }

    /// The session a connection joins or resumes: proven by the MAC (whose key mixed in the
    /// session's token) or, without keys, by the token in HELLO, compared in constant time.
    private func resume(_ hello: Hello, authenticated: Bool) throws -> SourceSession {
        let session = authenticated ? registry.resumeAuthenticated(hello.resumeSession)
                                    : registry.resume(hello.resumeSession, token: hello.resumeToken)
        guard let session else {
            throw SessionError.refuse(.unexpectedMessage, "no session \(hex(hello.resumeSession)) with that token")
        }
        return session
    }

    /// WELCOME (the session's id and resume token), then one REGION per served region, then
    /// (with keys) AUTH_CONFIRM, whose MAC covers all of them.
    func welcome(_ channel: FrameChannel, session: SourceSession, _ greeting: Greeting) throws(ChannelError) {
        var authenticator = greeting.authenticator
        if let key = greeting.sendKey { channel.protectSends(key: key, limits: recordLimits) }
        func send(_ message: Message) throws(ChannelError) {
            authenticator?.sent(message)
            try channel.send(message)
        }
        try send(.welcome(Welcome(features: session.features, regionCount: UInt32(regions.count),
                                  session: session.id, resumeToken: session.token)))
        for region in regions { try send(.region(region.descriptor)) }
        if let authenticator { try channel.send(authenticator.confirmation().0) }
    }
}
