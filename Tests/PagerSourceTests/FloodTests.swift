import Logging
import PagerDestination
import PagerHarness
import PagerKernel
import PagerTransport
import PagerTrust
import PagerWire
import Testing
@testable import PagerSource

/// A SourceServer on loopback serving one small region whose pages say their index.
final class LoopbackSource {
    static let pages = 64
    let memory: MemoryMapping
    let server: SourceServer
    private var thread: KernelThread?

    init(configure: (SourceServer) -> Void = { _ in }) throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        memory = try MemoryMapping.anonymous(length: LoopbackSource.pages * basePageSize)
        for p in 0..<LoopbackSource.pages { memory.page(p).storeBytes(of: UInt64(p) + 1, as: UInt64.self) }
        let region = ServedRegion(id: 1, name: "r", base: memory.base, length: LoopbackSource.pages * basePageSize)
        server = try SourceServer(listen: Endpoint(host: "127.0.0.1", port: 0), regions: [region], authentication: TestKeys.authentication, logger: logger)
        configure(server)
        let server = server
        thread = try KernelThread(name: "test-server") { server.run() }
    }

    var endpoint: Endpoint { server.listener.endpoint }

    /// Waits (at most 30 s) until the admission table satisfies `condition`.
    func waitForHandshakes(_ condition: (Admission.Snapshot) -> Bool) -> Bool {
        server.admission.wait(until: condition, deadline: monotonicNanoseconds() + 30_000_000_000)
    }

    /// A real destination's handshake, then page `page` fetched on its demand channel and
    /// checked; returns the client (for the caller to close).
    func fetchPage(_ page: Int) throws -> DestinationClient {
        let client = try DestinationClient(source: endpoint, clientName: "test", authentication: TestKeys.authentication)
        try client.demand.send(.pageRequest(PageRequest(requestID: 1, region: 1, offset: UInt64(page * basePageSize),
                                                         length: UInt64(basePageSize), flags: .urgent)))
        guard case .pageData(let h, let data) = try client.demand.receive() else {
            throw ChannelError.unexpected(peer: client.demand.peer, "no PAGE_DATA")
        }
        #expect(h.requestID == 1 && data.count == basePageSize)
        #expect(data.load(as: UInt64.self) == UInt64(page) + 1, "the page's own bytes")
        return client
    }

    /// Ends `client`'s session as a destination does (GOODBYE), then closes its connections:
    /// a close without it would end the session as a failed one. The source closes the demand
    /// connection once it has taken the GOODBYE: after that, nothing the close breaks counts.
    func finish(_ client: DestinationClient) throws {
        try client.demand.send(.goodbye)
        do {
            let extra = try client.demand.receive()
            Issue.record("a frame after GOODBYE: \(extra)")
        } catch ChannelError.closed {
            // The source took the GOODBYE.
        }
        client.close()
    }

    deinit {
        server.stop()
        thread?.join()
    }
}

@Suite("A connection flood", .serialized)
struct FloodTests {
    @Test("300 idle connections held open: a real destination still gets in and fetches a page; the flood evicts only itself; afterwards no handshake or thread is left",
          arguments: [(maxHandshakes: 64, perHost: 8), (maxHandshakes: 4, perHost: 8)])
    func idleFlood(maxHandshakes: Int, perHost: Int) throws {
        let limit = try raiseOpenFileLimit()
        #expect(limit.soft >= 1024, "room for the flood's descriptors on both ends")
        let source = try LoopbackSource {
            $0.maxHandshakes = maxHandshakes
            $0.maxHandshakesPerAddress = perHost
            $0.handshakeTimeoutNanoseconds = 120_000_000_000 // none times out during the test
        }
        let cap = min(maxHandshakes, perHost) // every connection comes from 127.0.0.1
        let floodCount = 300
        var flood: [TCPSocket] = []
        for _ in 0..<floodCount { flood.append(try TCPSocket.connect(source.endpoint)) }
        #expect(source.waitForHandshakes { $0.counts.evicted == floodCount - cap && $0.handshaking == cap },
                "the server took every flood connection, evicting the oldest")
        #expect(source.server.handshakesInProgress == cap)
        // The table's own bound: evicted threads still ending count against a second allowance of
        // `maxHandshakes`, not of the per-host cap (a CI run saw 21 with caps 64 and 8).
        #expect(source.server.admission.threads <= 2 * maxHandshakes, "ending evicted threads: at most as many again as the cap")
        #expect(source.server.waitUntilConnections(atMost: cap, withinNanoseconds: 30_000_000_000), "no more threads than the cap")

        // The destination's demand connection is the newest: it evicts the oldest of the
        // flood's and completes while the flood is held open; its push connection then finds
        // the place the demand connection left.
        let client = try source.fetchPage(5)
        var c = source.server.counts
        #expect(c.sessions == 1 && c.handshakesEvicted == floodCount - cap + 1, "\(c)")
        #expect(source.server.handshakesInProgress == cap - 1)

        for socket in flood { socket.shutdown() }
        try source.finish(client)
        #expect(source.waitForHandshakes { $0.threads == 0 }, "the handshake table empties")
        #expect(source.server.waitUntilConnections(atMost: 0, withinNanoseconds: 30_000_000_000), "every connection's thread ended")
        c = source.server.counts
        #expect(c.handshakesEvicted == floodCount - cap + 1 && c.handshakesAbandoned == cap - 1, "\(c)")
        #expect(c.handshakesTimedOut == 0 && c.handshakesRefused == 0 && c.failedSessions == 0, "\(c)")
    }

    @Test("each way a handshake ends is counted; a silent peer is told, precisely, that its time ran out")
    func handshakeEnds() throws {
        let source = try LoopbackSource { $0.handshakeTimeoutNanoseconds = 300_000_000 }
        // Silent: times out, and hears why.
        let silent = FrameChannel(try TCPSocket.connect(source.endpoint))
        // Closed before HELLO: abandoned.
        try TCPSocket.connect(source.endpoint).shutdown()
        // A header announcing more than a peer that has not authenticated may send: refused.
        let big = try TCPSocket.connect(source.endpoint)
        let header: [UInt8] = [0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x07, 0xD0] // HELLO, 2000 bytes
        try header.withUnsafeBytes { try big.writeAll([$0]) }
        let refusal = try #require(try FrameChannel(big).nextError())
        #expect(refusal.code == .malformedFrame && refusal.message.contains("limit is 1024"), "\(refusal.message)")

        let timeout = try #require(try silent.nextError())
        #expect(timeout.code == .timeout)
        #expect(timeout.message.hasSuffix("sent no complete HELLO within 300 ms"), "\(timeout.message)")
        #expect(source.waitForHandshakes { $0.counts == HandshakeCounts(evicted: 0, timedOut: 1, refused: 1, abandoned: 1) && $0.threads == 0 })
        // The limit was for the handshake only: a session after it gets pages as before.
        try source.finish(source.fetchPage(63))
        #expect(source.server.counts.handshakeSummary == "handshakes: 0 evicted, 1 timed out, 1 refused, 1 abandoned")
    }

    @Test("a slowloris flood (HELLO a byte at a time) times out as a whole, within its deadline")
    func slowloris() throws {
        let source = try LoopbackSource {
            $0.handshakeTimeoutNanoseconds = 500_000_000
            $0.maxHandshakesPerAddress = 64
        }
        let hello = Message.hello(Hello(features: [], clientName: "slowloris")).encoded()
        let started = monotonicNanoseconds()
        let peers = try (0..<10).map { _ in try TCPSocket.connect(source.endpoint) }
        // Two bytes each, well apart: each read finds a byte, yet the HELLO never completes.
        for at in 0..<2 {
            for peer in peers { try [hello[at]].withUnsafeBytes { try peer.writeAll([$0]) } }
            sleepMilliseconds(150) // pacing the peers is this test's subject, not a wait for an event
        }
        #expect(source.waitForHandshakes { $0.counts.timedOut == 10 && $0.threads == 0 })
        let took = monotonicNanoseconds() - started
        #expect(took < 500_000_000 + 5_000_000_000, "\(took / 1_000_000) ms")
        for peer in peers {
            let e = try #require(try FrameChannel(peer).nextError())
            #expect(e.code == .timeout)
        }
        try source.finish(source.fetchPage(1))
    }
}

