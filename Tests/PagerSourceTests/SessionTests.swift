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
        a.close(.failed)
        a.goodbye()
        #expect(a.lifecycle == .saidGoodbye && a.saidGoodbye && a.isClosed)
        a.close(.serverStopped)
        #expect(a.lifecycle == .saidGoodbye)
        let b = makeSession()
        b.close(.pushReceiveFailed)
        b.close(.serverStopped)
        #expect(b.lifecycle == .closed(.pushReceiveFailed) && !b.saidGoodbye)
    }

    @Test("waitForAnswer wakes on the acknowledgement another thread records, on the push connection's replacement and on the session's close, and times out otherwise")
    func waitForWakes() throws {
        let session = makeSession()
        let generation = session.attach(.push, IdleConnection())
        let acker = try KernelThread(name: "test-ack") { session.acknowledge(5) }
        // No deadline to fall back on within the test's time: 60 s would fail it loudly.
        #expect(session.waitForAnswer(push: generation, timeoutMilliseconds: 60_000) { $0.acknowledged >= 5 } == .answered)
        acker.join()
        let replacer = try KernelThread(name: "test-resume") { _ = session.attach(.push, IdleConnection()) }
        #expect(session.waitForAnswer(push: generation, timeoutMilliseconds: 60_000) { $0.acknowledged >= 6 } == .connectionGone)
        replacer.join()
        let other = makeSession()
        let current = other.attach(.push, IdleConnection())
        #expect(other.waitForAnswer(push: current, timeoutMilliseconds: 1) { $0.ponged > 0 } == .timedOut)
        let closer = try KernelThread(name: "test-close") { other.close(.serverStopped) }
        #expect(other.waitForAnswer(push: current, timeoutMilliseconds: 60_000) { $0.ponged > 0 } == .connectionGone)
        closer.join()
    }

    @Test("waitForWork returns when a request is queued, the session closes, its push connection is replaced or lost, or a RECEIVED map restarts the push")
    func waitForWork() throws {
        let session = makeSession()
        let generation = session.attach(.push, IdleConnection())
        let request = PageRequest(requestID: 1, region: 1, offset: 0, length: UInt64(basePageSize), flags: [])
        let producer = try KernelThread(name: "test-enq") { session.enqueue(request) }
        session.waitForWork(push: generation, restarts: session.restarts)
        producer.join()
        #expect(session.dequeue() == request && session.dequeue() == nil)
        let served = Self.region(memory)
        let restarter = try KernelThread(name: "test-rcvd") { _ = session.applyReceived(served, held: [0..<4]) }
        session.waitForWork(push: generation, restarts: 0)
        restarter.join()
        #expect(session.restarts == 1)
        #expect(session.claimUnsent(Self.region(memory), from: 0, maxPages: 100) == 4..<16, "the push resends what the map does not hold")
        let loser = try KernelThread(name: "test-lost") { session.pushLost(generation) }
        session.waitForWork(push: generation, restarts: 1)
        loser.join()
        #expect(!session.isCurrent(.push, generation) && !session.isClosed)
        let replacement = IdleConnection()
        let next = session.attach(.push, replacement)
        #expect(session.isCurrent(.push, next))
        let closer = try KernelThread(name: "test-close") { session.close(.failed) }
        session.waitForWork(push: next, restarts: 1)
        closer.join()
        #expect(session.isClosed && !session.isCurrent(.push, next))
    }

    @Test("attach replaces a connection of the same role (shut down: its peer is gone) and counts the resume; the last detach leaves the session to linger until one attaches or it closes")
    func attachDetachLinger() throws {
        let session = makeSession()
        let demand = IdleConnection(), push = IdleConnection()
        let p1 = session.attach(.push, push) // the push's handshake may complete first
        let d1 = session.attach(.demand, demand)
        #expect(session.resumes == 0, "the first demand and the first push are no resume")
        #expect(!session.detach(.push, p1), "the demand connection is still attached")
        let d2 = session.attach(.demand, IdleConnection())
        #expect(demand.wasShutDown, "the half-open connection it replaces is shut down")
        #expect(session.resumes == 1)
        #expect(!session.detach(.demand, d1), "a replaced connection's detach changes nothing")
        #expect(session.detach(.demand, d2), "the last connection left")
        #expect(!session.linger(until: monotonicNanoseconds() + 20_000_000), "nobody came within 20 ms")
        let resumer = try KernelThread(name: "test-resume") {
            sleepMilliseconds(20)
            _ = session.attach(.push, IdleConnection())
        }
        #expect(session.linger(until: monotonicNanoseconds() + 60_000_000_000), "a resume ends the linger")
        resumer.join()
        #expect(session.resumes == 2, "a second push is a resume")
        let closer = try KernelThread(name: "test-close") { session.close(.serverStopped) }
        _ = session.detach(.push, 4)
        #expect(!session.linger(until: monotonicNanoseconds() + 60_000_000_000), "a close ends it too")
        closer.join()
    }

    @Test("a session is resumable exactly when its destination offered resume (live regions too: pre-copy rounds survive their connections)")
    func resumableWhenOffered() {
        #expect(makeSession().resumable)
        let plain = SourceSession(features: [], peer: "t", regions: [Self.region(memory)], gate: ReleaseGate())
        #expect(!plain.resumable, "a destination that did not offer resume")
    }

    private static func region(_ memory: UnsafeMutableRawPointer) -> ServedRegion {
        ServedRegion(id: 1, name: "r", base: UnsafeRawPointer(memory), length: 16 * basePageSize)
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

    @Test("totals: a session's counts stay in them after it ends; it can be resumed until then, never after")
    func registryTotals() {
        let registry = SessionRegistry()
        let session = makeSession()
        registry.open(session)
        #expect(registry.resume(session.id, token: session.token) === session)
        #expect(registry.resume(session.id, token: [0]) == nil)
        #expect(registry.token(of: session.id) == session.token)
        session.counters.demandRequests.add(3, ordering: .relaxed)
        session.counters.bytesSent.add(4096, ordering: .relaxed)
        #expect(registry.totals.demandRequests == 3 && registry.totals.sessions == 1)
        session.counters.prefetchRequests.add(2, ordering: .relaxed)
        #expect(registry.served.count == 1 && registry.totals.prefetchRequests == 2)
        session.close(.lingerExpired)
        #expect(registry.resume(session.id, token: session.token) == nil, "a closed session is not resumed")
        #expect(registry.resumeAuthenticated(session.id) == nil)
        #expect(registry.end(session) && !registry.end(session), "ended once")
        registry.lingerExpired()
        let totals = registry.totals
        #expect(registry.served.isEmpty && registry.token(of: session.id) == nil)
        #expect(totals.sessions == 1 && totals.demandRequests == 3 && totals.prefetchRequests == 2 && totals.bytesSent == 4096)
        #expect(totals.failedSessions == 1 && totals.lingerExpired == 1)
    }
}

/// A connection that carries nothing and records whether it was shut down.
final class IdleConnection: FrameConnection, @unchecked Sendable {
    let peer = "idle"
    var sendLimit: UInt32 = WireLimits.absoluteMaxPayload
    var receiveLimit: UInt32 = WireLimits.absoluteMaxPayload
    var verifyChecksums = false
    private let down = Mutex(false)
    var wasShutDown: Bool { down.withLock { $0 } }
    func send(_ message: Message) throws(ChannelError) {}
    func sendPageData(_ header: PageDataHeader, checksums: [UInt32]?, segments: [UnsafeRawBufferPointer]) throws(ChannelError) {}
    func receive() throws(ChannelError) -> Incoming { throw .closed(peer: peer) }
    func shutdown() { down.withLock { $0 = true } }
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
