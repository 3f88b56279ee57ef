import Logging
import PagerKernel
import PagerTransport
import PagerTrust
import PagerWire

/// A destination's connection to a source: the demand channel and the push channel of one
/// session, after the handshake, and what it takes to resume the session (``resumer``).
public final class DestinationClient: @unchecked Sendable {
    public let demand: FrameChannel
    public let push: FrameChannel
    public let regions: [RegionDescriptor]
    public let session: UInt64
    public let features: Features
    /// Connects again and resumes this session after a lost connection (§6).
    public let resumer: Resumer
    /// The demand connection's admission key (spec §5): what an RDMA queue pair of this
    /// session proves itself with. Nil without authentication.
    public let admissionKey: [UInt8]?
    /// The source's address (its RDMA CM listener has the same one, spec §4.15).
    public let source: Endpoint

    /// Connects both channels to `source` and completes the handshake of each, with the
    /// primary key of `authentication` (or, with `.insecureNone`, without authentication).
    ///
    /// With ``Features/encryption`` in `features` (and keys) every frame after AUTH_RESPONSE is
    /// sealed on both connections, each under its own keys; the source must accept it.
    ///
    /// `timeoutMilliseconds` bounds each connection's connect and its handshake (a source
    /// whose kernel accepts but whose process does not answer, a blackhole).
    public init(source: Endpoint, clientName: String, features: Features = [.resume, .hugePages, .sparse],
                authentication: PeerAuthentication, recordLimits: RecordLimits = .standard, timeoutMilliseconds: Int = 10_000) throws {
        let first = Resumer(source: source, clientName: clientName, offered: features, authentication: authentication,
                            recordLimits: recordLimits, session: 0, token: nil, regions: [])
        let (demand, welcome, regions, keys) = try first.connect(.demand, session: 0, timeoutMilliseconds: timeoutMilliseconds)
        self.demand = demand
        self.source = source
        admissionKey = keys?.admissionKey
        self.regions = regions
        session = welcome.session
        self.features = welcome.features
        resumer = Resumer(source: source, clientName: clientName, offered: features, authentication: authentication,
                          recordLimits: recordLimits, session: welcome.session, token: welcome.resumeToken, regions: regions)
        do { push = try resumer.join(.push, timeoutMilliseconds: timeoutMilliseconds) } catch {
            // The source's half-made session then ends at once, not after its linger.
            demand.shutdown()
            throw error
        }
    }

    /// What resuming a session takes: where the source is, the HELLO offered, the keys, and
    /// the session's id, token and REGIONs (a resumed session must announce the same ones).
    public struct Resumer: SessionResumer {
        let source: Endpoint
        let clientName: String
        let offered: Features
        let authentication: PeerAuthentication
        let recordLimits: RecordLimits
        let session: UInt64
        let token: [UInt8]?
        let regions: [RegionDescriptor]

        /// Both connections again (the push one only if `push`), each within
        /// `timeoutMilliseconds` for its connect and its handshake.
        public func resume(push: Bool, timeoutMilliseconds: Int) throws -> (demand: any FrameConnection, push: (any FrameConnection)?) {
            let demand = try join(.demand, timeoutMilliseconds: timeoutMilliseconds)
            do {
                return (demand, push ? try join(.push, timeoutMilliseconds: timeoutMilliseconds) : nil)
            } catch {
                demand.shutdown()
                throw error
            }
        }

        /// A connection that joins (or resumes) the session as `channel`.
        func join(_ channel: Hello.Channel, timeoutMilliseconds: Int) throws -> FrameChannel {
            let (connection, welcome, announced, _) = try connect(channel, session: session, timeoutMilliseconds: timeoutMilliseconds)
            guard welcome.session == session else {
                connection.shutdown()
                throw ChannelError.unexpected(peer: connection.peer, "\(channel) channel joined session \(hex(welcome.session)), not \(hex(session))")
            }
            guard announced == regions else {
                connection.shutdown()
                throw ChannelError.unexpected(peer: connection.peer, "the resumed session announces other regions than before: \(announced.map { "\($0.id)=\($0.name) (\($0.length) bytes)" }) instead of \(regions.map { "\($0.id)=\($0.name) (\($0.length) bytes)" })")
            }
            return connection
        }

        /// Connects and completes one handshake: a new session when `session` is 0.
        func connect(_ channel: Hello.Channel, session: UInt64, timeoutMilliseconds: Int) throws -> (FrameChannel, Welcome, [RegionDescriptor], HandshakeKeys?) {
            let socket = try TCPSocket.connect(source, timeoutMilliseconds: timeoutMilliseconds)
            socket.setReceiveTimeout(milliseconds: timeoutMilliseconds)
            socket.setUserTimeout(milliseconds: 5_000)
            // A small receive window on the push keeps the bulk in flight short, so a prefetch
            // answer on it is not stuck behind MiBs of pushed pages (see SourceServer.pushSendBuffer).
            if channel == .push { socket.setBufferSizes(512 << 10) }
            let connection = FrameChannel(socket)
            let hello = Hello(features: offered, channel: channel, resumeSession: session, clientName: clientName)
            let (welcome, regions, keys) = try DestinationClient.join(connection, hello, resumeToken: session == 0 ? nil : token,
                                                                      authentication, recordLimits)
            connection.negotiated = welcome.features
            socket.setReceiveTimeout(milliseconds: 0)
            return (connection, welcome, regions, keys)
        }
    }

    /// One connection's handshake: HELLO, then with keys AUTH_CHALLENGE, AUTH_RESPONSE,
    /// WELCOME and the REGIONs, and AUTH_CONFIRM verified before any of them is used.
    /// `resumeToken` is the session's token for the push connection (nil for the demand one).
    private static func join(_ channel: FrameChannel, _ hello: Hello, resumeToken: [UInt8]?,
                             _ authentication: PeerAuthentication, _ limits: RecordLimits) throws -> (Welcome, [RegionDescriptor], HandshakeKeys?) {
        let token = resumeToken ?? [UInt8](repeating: 0, count: 16)
        guard case .keys(let ring) = authentication else {
            precondition(!hello.features.contains(.encryption), "encryption needs keys")
            var plain = hello
            plain.resumeToken = token
            try channel.send(.hello(plain))
            let first = try channel.receive()
            if case .message(.authChallenge) = first { throw refuse(channel, .sourceRequiresAuthentication) }
            var ignored: ClientAuthenticator?
            let (welcome, regions) = try readWelcome(channel, first: first, recording: &ignored)
            return (welcome, regions, nil)
        }
        var authenticator: ClientAuthenticator? = try ClientAuthenticator(key: ring.primary)
        try channel.send(.hello(authenticator!.hello(hello)))
        let first = try channel.receive()
        guard case .message(.authChallenge(let nonce, let share)) = first else {
            if case .message(.welcome) = first { throw refuse(channel, .sourceDidNotAuthenticate) }
            throw ChannelError.unexpected(peer: channel.peer, "expected AUTH_CHALLENGE, got \(first.typeName)")
        }
        do {
            try channel.send(authenticator!.respond(challengeNonce: nonce, share: share, resumeToken: token))
        } catch let e as AuthenticationError { throw refuse(channel, e) }
        let encrypted = hello.features.contains(.encryption)
        if encrypted, let keys = authenticator!.keys {
            // The source seals from WELCOME on; a refusal may come first, in the clear.
            channel.protectSends(key: keys.clientWriteKey, limits: limits)
            channel.protectReceives(key: keys.serverWriteKey, limits: limits, clearErrorFirst: true)
        }
        let answer = try readWelcome(channel, first: try channel.receive(), recording: &authenticator)
        if encrypted && !answer.0.features.contains(.encryption) {
            throw ChannelError.unexpected(peer: channel.peer, "the source sealed WELCOME but did not accept encryption in it")
        }
        guard case .message(.authConfirm(let mac)) = try channel.receive() else {
            throw ChannelError.unexpected(peer: channel.peer, "expected AUTH_CONFIRM after the REGION frames")
        }
        let keys: HandshakeKeys
        do { keys = try authenticator!.confirm(mac: mac) } catch { throw refuse(channel, error) }
        return (answer.0, answer.1, keys)
    }

    /// Tells the source why this side ends the handshake, and returns the error to throw.
    private static func refuse(_ channel: FrameChannel, _ error: AuthenticationError) -> ChannelError {
        try? channel.send(.error(ProtocolError(code: .authenticationFailed, message: error.description)))
        return .authentication(peer: channel.peer, error)
    }

    /// WELCOME and its REGION frames, each recorded in the transcript (with keys) and checked
    /// against the destination's limits; used only after AUTH_CONFIRM verified them.
    private static func readWelcome(_ channel: FrameChannel, first: Incoming,
                                    recording authenticator: inout ClientAuthenticator?) throws -> (Welcome, [RegionDescriptor]) {
        guard case .message(.welcome(let welcome)) = first else {
            throw ChannelError.unexpected(peer: channel.peer, "expected WELCOME, got \(first.typeName)")
        }
        authenticator?.received(.welcome(welcome))
        guard welcome.version == ProtocolVersion.v1 else {
            throw ChannelError.unexpected(peer: channel.peer, "source chose version \(welcome.version)")
        }
        channel.sendLimit = welcome.acceptedPayload
        try Announcement.check(regionCount: welcome.regionCount, from: channel)
        var regions: [RegionDescriptor] = []
        for _ in 0..<welcome.regionCount {
            guard case .message(.region(let r)) = try channel.receive() else {
                throw ChannelError.unexpected(peer: channel.peer, "expected \(welcome.regionCount) REGION frames")
            }
            authenticator?.received(.region(r))
            regions.append(r)
        }
        try Announcement.check(welcome: welcome, regions: regions, from: channel)
        return (welcome, regions)
    }

    /// Picks the region a handoff maps onto: by id or name if given, else the only one.
    public func region(selectedBy selector: String?) throws -> RegionDescriptor {
        if let selector {
            if let r = regions.first(where: { "\($0.id)" == selector || $0.name == selector }) { return r }
            throw HandoffError(message: "the source serves no region \"\(selector)\" (it serves \(regions.map { "\($0.id)=\($0.name)" }.joined(separator: ", ")))")
        }
        guard regions.count == 1 else {
            throw HandoffError(message: "the source serves \(regions.count) regions; choose one with --region (\(regions.map { "\($0.id)=\($0.name)" }.joined(separator: ", ")))")
        }
        return regions[0]
    }

    public func close() {
        demand.shutdown()
        push.shutdown()
    }
}
