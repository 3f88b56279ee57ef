import Logging
import PagerDestination
import PagerHarness
import PagerKernel
import PagerSource
import PagerTransport
import PagerTrust
import PagerWire
import Synchronization
import Testing

/// The services' seams for one-sided reads (RDMA, spec §4.15) with the transport replaced by
/// fakes: the source negotiates `rdma`, opens the session in its read service under the same
/// admission key the destination derived, and sends RDMA_KEY on the demand connection; the
/// destination forwards the grant, offers its faults to the reads first, installs what they
/// bring and asks again over TCP for what they do not. Real userfaultfd, real sockets.
@Suite("One-sided reads: the services' seams", .serialized, .enabled(if: isRoot, "needs root for userfaultfd"))
struct PageReadsTests {
    /// The source's read service: records what it is told, and grants region 1 at once.
    final class FakeService: ReadService, @unchecked Sendable {
        let opened = Mutex<[(session: UInt64, key: [UInt8], regions: [UInt32])]>([])
        let closed = Mutex<[UInt64]>([])
        let base: UInt64
        /// Whether a push queue pair is "admitted": the push then leaves its data to READs.
        let pushAdmitted: Bool

        init(base: UInt64, pushAdmitted: Bool = false) {
            self.base = base
            self.pushAdmitted = pushAdmitted
        }

        func open(session: UInt64, admissionKey: [UInt8], regions: [ServedRegion], demand: @escaping @Sendable () -> (any FrameConnection)?,
                  held: @escaping @Sendable () -> Bool) {
            opened.withLock { $0.append((session, admissionKey, regions.map(\.id))) }
            regionLength.store(regions[0].length, ordering: .relaxed)
            // As after the demand queue pair's admission (not in the push test: there the push
            // connection's key, sent ahead of its PUSH_READs, must do).
            if !pushAdmitted { try? demand()?.send(.rdmaKey(region: 1, rkey: 0x4242, address: base, length: regions[0].length)) }
        }

        func close(session: UInt64) { closed.withLock { $0.append(session) } }

        let regionLength = Atomic<UInt64>(0)

        func pushKey(session: UInt64, region: UInt32) -> Message? {
            pushAdmitted && region == 1 ? .rdmaKey(region: 1, rkey: 0x4343, address: base, length: regionLength.load(ordering: .relaxed)) : nil
        }
    }

    /// The destination's reads: copies from the served memory itself (what a READ does), and
    /// fails every third one, which must then come over TCP.
    final class FakeReads: PageReads, @unchecked Sendable {
        private let memory: UnsafeRawPointer
        private struct State {
            var grant: (rkey: UInt32, address: UInt64, length: UInt64)?
            var queued: [PageRequest] = []
            var taken = 0
            var stopped = false
            var completed = 0
            var bytes = 0
            var failed = 0
        }
        private let state = Mutex(State())

        init(memory: UnsafeRawPointer) { self.memory = memory }

        var grant: (rkey: UInt32, address: UInt64, length: UInt64)? { state.withLock { $0.grant } }
        var failures: Int { state.withLock { $0.failed } }
        var readsCompleted: Int { state.withLock { $0.completed } }
        var bytesRead: Int { state.withLock { $0.bytes } }

        func take(_ requests: [PageRequest]) -> [PageRequest] {
            state.withLock { s in
                guard s.grant != nil, !s.stopped else { return requests }
                s.queued += requests
                s.taken += requests.count
                return []
            }
        }

        func grant(region: UInt32, rkey: UInt32, address: UInt64, length: UInt64, regionLength: UInt64?) throws {
            guard region == 1, let regionLength, length <= regionLength else { throw HandoffError(message: "bad grant for region \(region)") }
            state.withLock { $0.grant = (rkey, address, length) }
        }

        func serve(arrived: (PageRequest, UnsafeRawBufferPointer) -> Void, failed: ([PageRequest]) -> Void) {
            var n = 0
            while true {
                let (next, stopped) = state.withLock { s -> (PageRequest?, Bool) in
                    (s.queued.isEmpty ? nil : s.queued.removeFirst(), s.stopped)
                }
                if stopped { return }
                guard let request = next else {
                    sleepMicroseconds(200)
                    continue
                }
                n += 1
                if n % 3 == 0 {
                    state.withLock { $0.failed += 1 }
                    failed([request])
                    continue
                }
                arrived(request, UnsafeRawBufferPointer(start: memory + Int(request.offset), count: Int(request.length)))
                state.withLock { $0.completed += 1; $0.bytes += Int(request.length) }
            }
        }

        func stop() { state.withLock { $0.stopped = true } }
    }

    /// What one migration through the fakes left.
    struct Outcome {
        let report: ResolveReport
        /// Words not as served, at the touches and in the final check of every word.
        let bad: Int
        let session: UInt64
        let admissionKey: [UInt8]?
        let counts: SourceServer.Counters
        let base: UnsafeRawPointer
    }

    /// `pages` pages served (every 7th zero) with `service` as the read service, migrated into
    /// fresh memory by a resolver that `configure` sets up (given the served memory), the push
    /// connection with `push`; every `touchEvery`-th page (in a scattered order, or in order
    /// with `sequential`) touched
    /// meanwhile, every word checked at the end. The server is stopped before it returns.
    func migrate(pages: Int, service: (UInt64) -> FakeService, push: Bool, touchEvery: Int, sequential: Bool = false,
                 _ configure: (inout FaultResolver.Configuration, UnsafeRawPointer) -> Void) throws -> (Outcome, FakeService) {
        let served = try MemoryMapping.anonymous(length: pages * basePageSize)
        func expected(_ p: Int, _ w: Int) -> UInt64 { p % 7 == 0 ? 0 : UInt64(p) &* 0x9E37_79B9 ^ UInt64(w) }
        for p in 0..<pages where p % 7 != 0 {
            let words = served.page(p).assumingMemoryBound(to: UInt64.self)
            for w in 0..<basePageSize / 8 { words[w] = expected(p, w) }
        }
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let region = ServedRegion(id: 1, name: "ram", base: served.base, length: pages * basePageSize)
        let server = try SourceServer(listen: Endpoint(host: "127.0.0.1", port: 0), regions: [region], authentication: TestKeys.authentication, logger: logger)
        let readService = service(UInt64(UInt(bitPattern: served.base)))
        server.readService = readService
        let serverThread = try KernelThread(name: "test-server") { server.run() }
        defer { server.stop(); serverThread.join() }

        let destination = try MemoryMapping.anonymous(length: pages * basePageSize)
        let uffd = try Userfaultfd()
        try uffd.negotiate([.eventRemove, .eventUnmap])
        try uffd.register(destination.range, mode: .missing)
        let client = try DestinationClient(source: server.listener.endpoint, clientName: "test", features: [.resume, .rdma],
                                           authentication: TestKeys.authentication)
        #expect(client.features.contains(.rdma))
        var configuration = FaultResolver.Configuration()
        configure(&configuration, UnsafeRawPointer(served.base))
        let resolver = try FaultResolver(uffd: uffd, region: try client.region(selectedBy: nil),
                                         mappings: [RegionMapping(base: UInt64(UInt(bitPattern: destination.base)), size: UInt64(pages * basePageSize), regionOffset: 0, pageSize: basePageSize)],
                                         demand: client.demand, push: push ? client.push : nil, configuration: configuration, logger: logger)
        let outcome = Mutex<Result<ResolveReport, ResolveError>?>(nil)
        let resolving = try KernelThread(name: "test-resolver") {
            let result = Result<ResolveReport, ResolveError>(catching: { () throws(ResolveError) -> ResolveReport in try resolver.run() })
            outcome.withLock { $0 = result }
        }
        var bad = 0
        for i in stride(from: 0, to: pages, by: touchEvery) {
            let p = sequential ? i : (i &* 2654435761) % pages
            if touch(destination.page(p) + 8) != expected(p, 1) { bad += 1 }
        }
        resolving.join()
        client.close()
        let report = try outcome.withLock { try #require($0) }.get()
        for p in 0..<pages {
            let words = destination.page(p).assumingMemoryBound(to: UInt64.self)
            for w in 0..<basePageSize / 8 where words[w] != expected(p, w) { bad += 1 }
        }
        server.stop()
        serverThread.join()
        return (Outcome(report: report, bad: bad, session: client.session, admissionKey: client.admissionKey, counts: server.counts,
                        base: UnsafeRawPointer(served.base)), readService)
    }

    @Test("faults are read first, failed reads come over TCP, and both sides hold the same admission key")
    func seams() throws {
        var reads: FakeReads?
        let (run, service) = try migrate(pages: 4096, service: { FakeService(base: $0) }, push: false, touchEvery: 1) { configuration, memory in
            reads = FakeReads(memory: memory)
            configuration.pageReads = reads
        }
        let report = run.report
        let base = UInt64(UInt(bitPattern: run.base))
        #expect(run.bad == 0)
        // The grant reached the reads; they brought pages, and what they failed came over TCP.
        let fake = try #require(reads)
        #expect(fake.grant?.rkey == 0x4242 && fake.grant?.address == base)
        #expect(report.reads > 0 && report.reads == fake.readsCompleted && report.readBytes == UInt64(fake.bytesRead))
        #expect(fake.failures > 0 && report.readsAskedAgain == fake.failures, "\(fake.failures) failed reads, \(report.readsAskedAgain) asked again")
        // One open with the key the destination derived (never sent: both ends computed it).
        let opened = service.opened.withLock { $0 }
        #expect(opened.count == 1 && opened.first?.session == run.session && opened.first?.regions == [1])
        #expect(opened.first?.key == run.admissionKey && run.admissionKey?.count == 32)
        #expect(service.closed.withLock { $0 } == [run.session])
    }

    @Test("with a push queue pair the push leaves its data to READs (PUSH_READ after RDMA_KEY on the push connection); failed ones come over TCP; every byte right; with scattered faults, and with a scan meanwhile (its window ahead goes as prefetch on the push channel)",
          .timeLimit(.minutes(1)), arguments: [false, true])
    func pushByRead(sequentialScan: Bool) throws {
        let pages = 8192 // 32 MiB: 64 PUSH_READs of 512 KiB
        var reads: FakeReads?
        // Faults meanwhile (over TCP: no demand reads here): a few scattered ones, or a scan
        // (whose window ahead goes as prefetch on the push channel).
        let (run, _) = try migrate(pages: pages, service: { FakeService(base: $0, pushAdmitted: true) }, push: true,
                                   touchEvery: sequentialScan ? 1 : 97, sequential: sequentialScan) { configuration, memory in
            reads = FakeReads(memory: memory)
            configuration.pushReads = reads
            configuration.rdmaNegotiated = true
        }
        let report = run.report
        let pushReads = try #require(reads)
        #expect(run.bad == 0)
        // The key came ahead of the PUSH_READs; READs brought most of the region, the third
        // that failed came over TCP, and the source sent no push data itself.
        #expect(pushReads.grant?.rkey == 0x4343)
        #expect(report.pushReads > 0 && report.pushReads == pushReads.readsCompleted && report.pushReadBytes == UInt64(pushReads.bytesRead))
        #expect(pushReads.failures > 0 && report.readsAskedAgain == pushReads.failures, "\(pushReads.failures) failed, \(report.readsAskedAgain) asked again")
        #expect(report.arrivals.push > 0 && report.pushReadBytes >= UInt64(pages * basePageSize) / 2, "\(report.arrivals), \(report.pushReadBytes) bytes read")
        // PUSH_COMPLETE comes long before the READs are done: their pages are in flight, so the
        // final sweep (which asks over TCP for what is still missing after the push) waits.
        #expect(report.sweepRequests == 0, "\(report.sweepRequests) sweep requests")
        #expect(run.counts.pushReadBytes >= report.pushReadBytes && run.counts.pushReadBytes <= UInt64(pages * basePageSize), "\(run.counts)")
    }

    @Test("a source without a read service does not accept rdma")
    func refusals() throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let served = try MemoryMapping.anonymous(length: 64 * basePageSize)
        let region = ServedRegion(id: 1, name: "ram", base: served.base, length: 64 * basePageSize)
        let server = try SourceServer(listen: Endpoint(host: "127.0.0.1", port: 0), regions: [region], authentication: TestKeys.authentication, logger: logger)
        let serverThread = try KernelThread(name: "test-server") { server.run() }
        defer { server.stop(); serverThread.join() }
        let client = try DestinationClient(source: server.listener.endpoint, clientName: "test", features: [.resume, .rdma],
                                           authentication: TestKeys.authentication)
        defer { client.close() }
        #expect(!client.features.contains(.rdma))
    }
}
