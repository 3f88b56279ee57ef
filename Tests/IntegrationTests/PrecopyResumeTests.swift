import Glibc
import Logging
import PagerCore
import PagerDestination
import PagerHarness
import PagerKernel
import PagerSource
import PagerTransport
import PagerWire
import Synchronization
import Testing

/// A push connection that is cut (both directions, the frame lost) when the first frame
/// `cut` picks arrives: a lost connection at an exact point of pre-copy.
final class CutConnection: FrameConnection, @unchecked Sendable {
    private let inner: any FrameConnection
    private let cut: (Incoming) -> Bool
    private let done = Atomic<Bool>(false)
    init(_ inner: any FrameConnection, cutWhen cut: @escaping (Incoming) -> Bool) {
        self.inner = inner
        self.cut = cut
    }
    var peer: String { inner.peer }
    var sendLimit: UInt32 {
        get { inner.sendLimit }
        set { inner.sendLimit = newValue }
    }
    var receiveLimit: UInt32 {
        get { inner.receiveLimit }
        set { inner.receiveLimit = newValue }
    }
    var verifyChecksums: Bool {
        get { inner.verifyChecksums }
        set { inner.verifyChecksums = newValue }
    }
    var wasCut: Bool { done.load(ordering: .acquiring) }
    func send(_ message: Message) throws(ChannelError) { try inner.send(message) }
    func sendPageData(_ header: PageDataHeader, checksums: [UInt32]?, segments: [UnsafeRawBufferPointer]) throws(ChannelError) {
        try inner.sendPageData(header, checksums: checksums, segments: segments)
    }
    func receive() throws(ChannelError) -> Incoming {
        let incoming = try inner.receive()
        if !done.load(ordering: .acquiring) && cut(incoming) {
            done.store(true, ordering: .releasing)
            inner.shutdown()
            throw .closed(peer: inner.peer)
        }
        return incoming
    }
    func shutdown() { inner.shutdown() }
}

/// A pre-copy session whose push connection is lost at a chosen point: mid-round, at a
/// checkpoint PING, at the switch's INVALIDATE (the writer paused), at SWITCHED. The
/// destination resumes with its staged map; the source continues the rounds or makes the
/// switch again; and every page, installed through a real userfaultfd, equals the source's
/// final memory, pages written during the rounds included.
@Suite("Pre-copy resumes after a lost connection, at every point of it", .serialized,
       .enabled(if: isRoot, "needs root for userfaultfd and write tracking"))
struct PrecopyResumeTests {
    enum Point: String, CaseIterable, CustomStringConvertible {
        case roundZero = "round 0 (the 10th PAGE_DATA)"
        case laterRound = "a later round (the 80th PAGE_DATA)"
        case checkpoint = "a checkpoint PING (its PONG never sent)"
        case invalidate = "the switch's INVALIDATE (the writer paused, no acknowledgement)"
        case switched = "SWITCHED (lost: the switch is made again)"
        var description: String { rawValue }

        func cut(_ seen: inout Int, _ incoming: Incoming) -> Bool {
            switch (self, incoming) {
            case (.roundZero, .pageData), (.laterRound, .pageData):
                seen += 1
                return seen == (self == .roundZero ? 10 : 80)
            case (.checkpoint, .message(.ping)):
                seen += 1
                return seen == 2
            case (.invalidate, .message(.invalidate)), (.switched, .message(.switched)):
                return true
            default:
                return false
            }
        }
    }

    @Test("the session resumes in pre-copy and every page is the source's final content", arguments: Point.allCases)
    func resumeAt(_ point: Point) throws {
        let pages = 8192 // 32 MiB: 64 push chunks in round 0
        let served = try MemoryMapping.anonymous(length: pages * basePageSize)
        func write(_ p: Int, _ version: UInt64) {
            let words = served.page(p).assumingMemoryBound(to: UInt64.self)
            for w in 0..<basePageSize / 8 { words[w] = UInt64(p) << 32 ^ UInt64(w) ^ version << 20 }
        }
        for p in 0..<pages { write(p, 1) }
        let lines = RecordedLog()
        let logger = lines.logger
        let tracker = try WriteTracker(ownRange: served.range)
        var policy = ConvergencePolicy()
        policy.downtimeBudgetNanoseconds = 0
        policy.maxRounds = 3
        let servedBase = UInt(bitPattern: served.base)
        // Writes go on until the pause: every round has pages to send again, and a copy lost
        // with the connection leaves the destination an older one.
        let stop = Atomic<Bool>(false)
        let writing = Atomic<Bool>(true)
        let live = LiveRegion(tracker: tracker, policy: policy, pause: {
            stop.store(true, ordering: .releasing)
            while writing.load(ordering: .acquiring) { sleepMilliseconds(1) }
            let memory = UnsafeMutableRawPointer(bitPattern: servedBase)!
            for p in [5, 4000, 8191] { memory.storeBytes(of: 0xFEED_0000 + UInt64(p), toByteOffset: p * basePageSize + 64, as: UInt64.self) }
        })
        let writer = try KernelThread(name: "test-writer") {
            var version: UInt64 = 2
            var rng = SplitMix64(state: 7)
            while !stop.load(ordering: .acquiring) {
                let memory = UnsafeMutableRawPointer(bitPattern: servedBase)!
                for _ in 0..<64 {
                    let p = Int(rng.next() % UInt64(pages))
                    memory.storeBytes(of: version, toByteOffset: p * basePageSize + 256, as: UInt64.self)
                }
                version += 1
                sleepMilliseconds(1)
            }
            writing.store(false, ordering: .releasing)
        }
        defer { stop.store(true, ordering: .releasing); writer.join() }
        let region = ServedRegion(id: 1, name: "live-ram", base: served.base, length: pages * basePageSize, live: live)
        let server = try SourceServer(listen: Endpoint(host: "127.0.0.1", port: 0), regions: [region], authentication: TestKeys.authentication, logger: logger)
        let serverThread = try KernelThread(name: "test-server") { server.run() }
        defer { server.stop(); serverThread.join() }

        let client = try DestinationClient(source: server.listener.endpoint, clientName: "test", features: [.resume, .invalidation], authentication: TestKeys.authentication)
        let descriptor = try client.region(selectedBy: nil)
        var seen = 0
        let cutPush = CutConnection(client.push) { point.cut(&seen, $0) }
        var connections = SessionConnections(demand: client.demand, push: cutPush)
        let resumption = PrecopyResumption(resumer: client.resumer, stallTimeoutMilliseconds: 1_500, reconnectTimeoutMilliseconds: 10_000)
        let staged = try StagedPages.receive(region: descriptor, connections: &connections, resumption: resumption, logger: logger)
        #expect(cutPush.wasCut, "the connection was cut at \(point)")
        #expect(staged.outages.count == 1 && staged.outages.first?.resumedAfterNanoseconds != nil, "\(staged.outages)")
        let outcome = live.outcome
        #expect(outcome.switched, "\(outcome)")
        #expect(lines.contains("pre-copy resumed after"))
        switch point {
        case .invalidate, .switched:
            #expect(lines.contains("the switch is made again"), "\(lines.messages)")
        case .roundZero, .laterRound, .checkpoint:
            #expect(lines.contains("continues on the resumed push connection"), "\(lines.messages)")
        }
        // The source's memory is final now (the writer is paused): snapshot it.
        let expected = try MemoryMapping.anonymous(length: pages * basePageSize)
        expected.base.copyMemory(from: served.base, byteCount: pages * basePageSize)

        let resolved = try StagedResolve(staged, region: descriptor, pages: pages, expected: expected,
                                         demand: connections.demand, push: connections.push, resumer: client.resumer, logger: logger)
        connections.demand.shutdown()
        connections.push.shutdown()
        client.close()
        #expect(resolved.failure == nil, "\(resolved.failure ?? "")")
        #expect(resolved.differing.isEmpty, "\(resolved.differing.count) pages differ from the source's final memory (first: \(resolved.differing.prefix(8)))")
    }

    @Test("a session lost after the writer was paused but before SWITCHED, and never resumed: once the linger time is over the writer runs again (the workload never moved)")
    func unresumedSwitchResumesWriter() throws {
        let pages = 1024
        let served = try MemoryMapping.anonymous(length: pages * basePageSize)
        for p in 0..<pages { served.page(p).storeBytes(of: UInt64(p) + 1, as: UInt64.self) }
        let lines = RecordedLog()
        let logger = lines.logger
        var policy = ConvergencePolicy()
        policy.downtimeBudgetNanoseconds = 0
        policy.maxRounds = 1
        let servedBase = UInt(bitPattern: served.base)
        let resumed = WaitableState(false)
        let live = LiveRegion(tracker: try WriteTracker(ownRange: served.range), policy: policy, pause: {
            // The last write before the pause: the final scan finds it and INVALIDATEs it.
            UnsafeMutableRawPointer(bitPattern: servedBase)!.storeBytes(of: 0xFEED, toByteOffset: 3 * basePageSize + 8, as: UInt64.self)
        }, resume: { resumed.change { $0 = true } })
        let region = ServedRegion(id: 1, name: "live-ram", base: served.base, length: pages * basePageSize, live: live)
        let server = try SourceServer(listen: Endpoint(host: "127.0.0.1", port: 0), regions: [region], authentication: TestKeys.authentication, logger: logger)
        server.sessionLingerNanoseconds = 300_000_000
        let serverThread = try KernelThread(name: "test-server") { server.run() }
        defer { server.stop(); serverThread.join() }

        let client = try DestinationClient(source: server.listener.endpoint, clientName: "test", features: [.resume, .invalidation], authentication: TestKeys.authentication)
        let descriptor = try client.region(selectedBy: nil)
        let cutPush = CutConnection(client.push) { if case .message(.invalidate) = $0 { return true } else { return false } }
        var connections = SessionConnections(demand: client.demand, push: cutPush)
        // No resumption: the destination gives up at the cut.
        #expect(throws: ResolveError.self) { _ = try StagedPages.receive(region: descriptor, connections: &connections, resumption: nil, logger: logger) }
        client.close()
        #expect(resumed.wait(until: { $0 }, deadline: monotonicNanoseconds() + 10_000_000_000), "the writer was let run again")
        #expect(!live.outcome.switched, "SWITCHED never went out")
        // Logged right after the writer was let run: wait for the line, not just the flag.
        #expect(lines.first(containing: "ended before SWITCHED for region 1: its writer runs again") != nil, "\(lines.messages)")
    }
}
