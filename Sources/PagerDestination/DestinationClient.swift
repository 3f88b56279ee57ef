import Logging
import PagerKernel
import PagerTransport
import PagerWire

/// A destination's connection to a source: the demand channel and the push channel of one
/// session, after the handshake.
public final class DestinationClient: @unchecked Sendable {
    public let demand: FrameChannel
    public let push: FrameChannel
    public let regions: [RegionDescriptor]
    public let session: UInt64
    public let features: Features

    /// Connects both channels to `source` and completes the handshake.
    public init(source: Endpoint, clientName: String, features: Features = [.resume, .hugePages]) throws {
        let demandSocket = try TCPSocket.connect(source)
        demandSocket.setReceiveTimeout(milliseconds: 10_000)
        demand = FrameChannel(demandSocket)
        try demand.send(.hello(Hello(features: features, clientName: clientName)))
        let (welcome, regions) = try DestinationClient.readWelcome(demand)
        self.regions = regions
        session = welcome.session
        self.features = welcome.features
        let pushSocket = try TCPSocket.connect(source)
        pushSocket.setReceiveTimeout(milliseconds: 10_000)
        // A small receive window on the push keeps the bulk in flight short, so a prefetch
        // answer on it is not stuck behind MiBs of pushed pages (see SourceServer.pushSendBuffer).
        pushSocket.setBufferSizes(512 << 10)
        push = FrameChannel(pushSocket)
        try push.send(.hello(Hello(features: features, resumeSession: welcome.session, resumeToken: welcome.resumeToken, clientName: clientName)))
        let (again, _) = try DestinationClient.readWelcome(push)
        guard again.session == welcome.session else {
            throw ChannelError.unexpected(peer: push.peer, "push channel joined session \(hex(again.session)), not \(hex(welcome.session))")
        }
        demandSocket.setReceiveTimeout(milliseconds: 0)
        pushSocket.setReceiveTimeout(milliseconds: 0)
    }

    private static func readWelcome(_ channel: FrameChannel) throws -> (Welcome, [RegionDescriptor]) {
        let first = try channel.receive()
        guard case .message(.welcome(let welcome)) = first else {
            if case .message(.error(let e)) = first { throw ChannelError.peerError(peer: channel.peer, e) }
            throw ChannelError.unexpected(peer: channel.peer, "expected WELCOME")
        }
        guard welcome.version == ProtocolVersion.v1 else {
            throw ChannelError.unexpected(peer: channel.peer, "source chose version \(welcome.version)")
        }
        channel.sendLimit = welcome.maxPayload
        try Announcement.check(regionCount: welcome.regionCount, from: channel)
        var regions: [RegionDescriptor] = []
        for _ in 0..<welcome.regionCount {
            guard case .message(.region(let r)) = try channel.receive() else {
                throw ChannelError.unexpected(peer: channel.peer, "expected \(welcome.regionCount) REGION frames")
            }
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
