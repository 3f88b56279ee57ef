import Glibc
import Logging
import PagerKernel
import PagerTransport
import PagerTrust
import PagerWire
import Synchronization
import Testing
@testable import PagerSource

@Suite("Sessions: lifecycle, waits, counters")
struct SessionTests {
    private let memory = UnsafeMutableRawPointer.allocate(byteCount: 16 * basePageSize, alignment: basePageSize)

    private func makeSession(_ gate: ReleaseGate = ReleaseGate()) -> SourceSession {
        let region = ServedRegion(id: 1, name: "r", base: UnsafeRawPointer(memory), length: 16 * basePageSize)
        return SourceSession(features: [.resume], peer: "test", regions: [region], gate: gate)
    }

    @Test("GOODBYE wins over a close before or after it; the first close reason stays")
    func lifecycle() {
        let a = makeSession()
        #expect(a.lifecycle == .open && !a.isClosed)
        a.close(.pushEnded)
        a.goodbye()
        #expect(a.lifecycle == .saidGoodbye && a.saidGoodbye && a.isClosed)
        a.close(.serverStopped)
        #expect(a.lifecycle == .saidGoodbye)
        let b = makeSession()
        b.close(.pushReceiveFailed)
        b.close(.serverStopped)
        #expect(b.lifecycle == .closed(.pushReceiveFailed) && !b.saidGoodbye)
    }

    @Test("waitFor wakes on the acknowledgement another thread records, and returns false once the session closes")
    func waitForWakes() throws {
        let session = makeSession()
        let acker = try KernelThread(name: "test-ack") { session.acknowledge(5) }
        // No deadline to fall back on within the test's time: 60 s would fail it loudly.
        #expect(session.waitFor({ $0.acknowledged >= 5 }, timeoutMilliseconds: 60_000))
        acker.join()
        let closer = try KernelThread(name: "test-close") { session.close(.serverStopped) }
        #expect(!session.waitFor({ $0.acknowledged >= 6 }, timeoutMilliseconds: 60_000))
        closer.join()
        #expect(!makeSession().waitFor({ $0.ponged > 0 }, timeoutMilliseconds: 1), "times out")
    }

    @Test("waitForWork returns when a request is queued or the session closes")
    func waitForWork() throws {
        let session = makeSession()
        let request = PageRequest(requestID: 1, region: 1, offset: 0, length: UInt64(basePageSize), flags: [])
        let producer = try KernelThread(name: "test-enq") { session.enqueue(request) }
        session.waitForWork()
        producer.join()
        #expect(session.dequeue() == request && session.dequeue() == nil)
        let closer = try KernelThread(name: "test-close") { session.close(.pushEnded) }
        session.waitForWork()
        closer.join()
        #expect(session.isClosed)
    }

    @Test("a held gate: a sender waits until release, or gives up when its session closes")
    func gate() throws {
        let gate = ReleaseGate()
        #expect(gate.waitUntilReleased(unless: { false }), "not held: passes at once")
        gate.hold()
        let session = makeSession(gate)
        let closer = try KernelThread(name: "test-close") { session.close(.serverStopped) }
        #expect(!gate.waitUntilReleased(unless: { session.isClosed }))
        closer.join()
        let releaser = try KernelThread(name: "test-release") { gate.release() }
        #expect(gate.waitUntilReleased(unless: { false }))
        releaser.join()
    }

    @Test("totals: a session's counts stay in them after its connections end; a push cannot join after its demand ended")
    func registryTotals() {
        let registry = SessionRegistry()
        let session = makeSession()
        registry.open(session)
        #expect(registry.resume(session.id, token: session.token) === session)
        #expect(registry.resume(session.id, token: [0]) == nil)
        session.counters.demandRequests.add(3, ordering: .relaxed)
        session.counters.bytesSent.add(4096, ordering: .relaxed)
        #expect(registry.totals.demandRequests == 3 && registry.totals.sessions == 1)
        registry.leave(session, demand: true)
        #expect(registry.resume(session.id, token: session.token) == nil)
        // The push is still attached and still counts.
        session.counters.prefetchRequests.add(2, ordering: .relaxed)
        #expect(registry.served.count == 1 && registry.totals.prefetchRequests == 2)
        registry.leave(session, demand: false)
        registry.failed()
        let totals = registry.totals
        #expect(registry.served.isEmpty)
        #expect(totals.sessions == 1 && totals.demandRequests == 3 && totals.prefetchRequests == 2 && totals.bytesSent == 4096 && totals.failedSessions == 1)
    }
}

@Suite("The hold/release gate on a real server", .serialized)
struct HoldReleaseTests {
    @Test("a held server answers a demand request once released; stop() ends a request still held")
    func holdRelease() throws {
        let pages = 16
        let memory = UnsafeMutableRawPointer.allocate(byteCount: pages * basePageSize, alignment: basePageSize)
        defer { memory.deallocate() }
        for p in 0..<pages { memory.storeBytes(of: UInt64(p) + 100, toByteOffset: p * basePageSize, as: UInt64.self) }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let region = ServedRegion(id: 1, name: "r", base: UnsafeRawPointer(memory), length: pages * basePageSize)
        let server = try SourceServer(listen: Endpoint(host: "127.0.0.1", port: 0), regions: [region], authentication: .insecureNone, logger: logger)
        server.hold()
        let serverThread = try KernelThread(name: "test-server") { server.run() }
        defer { server.stop(); serverThread.join() }

        let demand = FrameChannel(try TCPSocket.connect(server.listener.endpoint))
        try demand.send(.hello(Hello(features: [], clientName: "test")))
        guard case .message(.welcome) = try demand.receive(), case .message(.region) = try demand.receive() else {
            Issue.record("no WELCOME and REGION")
            return
        }
        try demand.send(.pageRequest(PageRequest(requestID: 7, region: 1, offset: UInt64(3 * basePageSize), length: UInt64(basePageSize), flags: .urgent)))
        // Held: no answer (a bounded wait for something that must not happen).
        demand.socket.setReceiveTimeout(milliseconds: 100)
        #expect(throws: ChannelError.self) { _ = try demand.receive() }
        demand.socket.setReceiveTimeout(milliseconds: 30_000)
        server.release()
        guard case .pageData(let header, let bytes) = try demand.receive() else {
            Issue.record("no PAGE_DATA after release")
            return
        }
        #expect(header.requestID == 7 && header.offset == UInt64(3 * basePageSize) && bytes.load(as: UInt64.self) == 103)
        // A PING answered after it: the request's counts are in by then (same thread, in order).
        try demand.send(.ping(token: 1, timestamp: 0))
        guard case .message(.pong) = try demand.receive() else {
            Issue.record("no PONG")
            return
        }
        #expect(server.counts.demandRequests == 1 && server.counts.bytesSent == UInt64(basePageSize) && server.counts.sessions == 1)

        // Held again, a request waits; stop() wakes it and the connection ends.
        server.hold()
        try demand.send(.pageRequest(PageRequest(requestID: 8, region: 1, offset: 0, length: UInt64(basePageSize), flags: .urgent)))
        server.stop()
        var answered = false
        do {
            while true { if case .pageData = try demand.receive() { answered = true } }
        } catch {}
        #expect(!answered, "nothing is served while held, even when stopping")
    }
}
