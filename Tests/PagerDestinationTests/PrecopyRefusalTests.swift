import PagerDestination
import PagerTransport
import PagerWire
import Synchronization
import Testing

/// A connection that hands out scripted messages and records what is sent.
final class ScriptedConnection: FrameConnection, @unchecked Sendable {
    let peer = "scripted"
    var sendLimit: UInt32 = WireLimits.absoluteMaxPayload
    var receiveLimit: UInt32 = WireLimits.absoluteMaxPayload
    var verifyChecksums = true
    private let incoming: Mutex<[Message]>
    let sent = Mutex<[Message]>([])

    init(_ messages: [Message]) { incoming = Mutex(messages) }

    func send(_ message: Message) throws(ChannelError) { sent.withLock { $0.append(message) } }
    func sendPageData(_ header: PageDataHeader, checksums: [UInt32]?, segments: [UnsafeRawBufferPointer]) throws(ChannelError) {}
    func receive() throws(ChannelError) -> Incoming {
        guard let next = incoming.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { throw .closed(peer: peer) }
        return .message(next)
    }
    func shutdown() {}
}

/// Pre-copy receives INVALIDATE: a range outside the live region is refused, not dropped.
@Suite("Pre-copy refusals")
struct PrecopyRefusalTests {
    static let live = RegionDescriptor(id: 1, pageShift: 12, flags: .live, length: 1 << 20, name: "live")

    /// Pre-copy on `push` alone (no resume: a scripted connection cannot be made again).
    func receive(_ push: ScriptedConnection) throws -> StagedPages {
        var connections = SessionConnections(demand: push, push: push)
        return try StagedPages.receive(region: Self.live, connections: &connections, resumption: nil, logger: .init(label: "test"))
    }

    @Test("an INVALIDATE range beyond the live region ends pre-copy, naming the range")
    func invalidateBeyondRegion() {
        let push = ScriptedConnection([
            .invalidate(Invalidate(sequence: 1, region: 1, ranges: [PageRange(offset: 0, length: 4096), PageRange(offset: 1 << 40, length: 4096)])),
            .switched(region: 1, lastSequence: 1),
        ])
        do {
            _ = try receive(push)
            Issue.record("pre-copy accepted an INVALIDATE beyond its region")
        } catch {
            #expect("\(error)".contains("INVALIDATE 1 of region 1 at 0x10000000000+0x1000 is outside the region (0x100000 bytes)"), "\(error)")
        }
        #expect(push.sent.withLock { $0.isEmpty }, "no INVALIDATE_ACK for a refused INVALIDATE")
    }

    @Test("an INVALIDATE inside the region is acknowledged, and one for another region too")
    func invalidateInside() throws {
        let push = ScriptedConnection([
            .invalidate(Invalidate(sequence: 1, region: 1, ranges: [PageRange(offset: 0, length: 1 << 20)])),
            .invalidate(Invalidate(sequence: 2, region: 2, ranges: [PageRange(offset: 1 << 40, length: 4096)])),
            .switched(region: 1, lastSequence: 2),
        ])
        let staged = try receive(push)
        #expect(staged.invalidatedBytes == 1 << 20)
        #expect(push.sent.withLock { $0 } == [.invalidateAck(sequence: 1, region: 1), .invalidateAck(sequence: 2, region: 2)])
    }
}
