import Logging
import PagerKernel
import PagerTransport
import PagerTrust
import PagerWire

/// A destination's connection to a source: the demand channel and the push channel of one
/// session, after the handshake.
public final class DestinationClient: @unchecked Sendable {
    public let demand: FrameChannel
    public let push: FrameChannel
    public let regions: [RegionDescriptor]
    public let session: UInt64
    public let features: Features

    /// Connects both channels to `source` and completes the handshake of each, with the
    /// primary key of `authentication` (or, with `.insecureNone`, without authentication).
    ///
    /// With ``Features/encryption`` in `features` (and keys) every frame after AUTH_RESPONSE is
    /// sealed on both connections, each under its own keys; the source must accept it.
    public init(source: Endpoint, clientName: String, features: Features = [.resume, .hugePages],
                authentication: PeerAuthentication, recordLimits: RecordLimits = .standard) throws {
        let demandSocket = try TCPSocket.connect(source)
        demandSocket.setReceiveTimeout(milliseconds: 10_000)
        demand = FrameChannel(demandSocket)
        let (welcome, regions) = try DestinationClient.join(
            demand, Hello(features: features, clientName: clientName), resumeToken: nil, authentication, recordLimits)
        self.regions = regions
        session = welcome.session
        self.features = welcome.features
        let pushSocket = try TCPSocket.connect(source)
        pushSocket.setReceiveTimeout(milliseconds: 10_000)
        // A small receive window on the push keeps the bulk in flight short, so a prefetch
        // answer on it is not stuck behind MiBs of pushed pages (see SourceServer.pushSendBuffer).
        pushSocket.setBufferSizes(512 << 10)
        push = FrameChannel(pushSocket)
        let (again, _) = try DestinationClient.join(
            push, Hello(features: features, channel: .push, resumeSession: welcome.session, clientName: clientName),
            resumeToken: welcome.resumeToken, authentication, recordLimits)
        guard again.session == welcome.session else {
            throw ChannelError.unexpected(peer: push.peer, "push channel joined session \(hex(again.session)), not \(hex(welcome.session))")
        }
        demandSocket.setReceiveTimeout(milliseconds: 0)
        pushSocket.setReceiveTimeout(milliseconds: 0)
    }

    /// One connection's handshake: HELLO, then with keys AUTH_CHALLENGE, AUTH_RESPONSE,
    /// WELCOME and the REGIONs, and AUTH_CONFIRM verified before any of them is used.
    /// `resumeToken` is the session's token for the push connection (nil for the demand one).
    private static func join(_ channel: FrameChannel, _ hello: Hello, resumeToken: [UInt8]?,
                             _ authentication: PeerAuthentication, _ limits: RecordLimits) throws -> (Welcome, [RegionDescriptor]) {
        let token = resumeToken ?? [UInt8](repeating: 0, count: 16)
        guard case .keys(let ring) = authentication else {
            precondition(!hello.features.contains(.encryption), "encryption needs keys")
            var plain = hello
            plain.resumeToken = token
            try channel.send(.hello(plain))
            let first = try channel.receive()
            if case .message(.authChallenge) = first { throw refuse(channel, .sourceRequiresAuthentication) }
            var ignored: ClientAuthenticator?
            return try readWelcome(channel, first: first, recording: &ignored)
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
        do { _ = try authenticator!.confirm(mac: mac) } catch { throw refuse(channel, error) }
        return answer
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
