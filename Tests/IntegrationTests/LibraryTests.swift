import Glibc
import Logging
import PagerCore
import PagerDestination
import PagerHarness
import PagerKernel
import PagerSource
import PagerTrust
import PagerWire
import Synchronization
import Testing

@Suite("The library API", .serialized, .enabled(if: isRoot, "needs root for userfaultfd"))
struct LibraryTests {
    @Test("a process serves its own memory; another region pulls it through userfaultfd with per-page CRC-32C")
    func serveOwnMemory() throws {
        let pages = 4096 // 16 MiB
        let served = try MemoryMapping.anonymous(length: pages * basePageSize)
        for p in 0..<pages where p % 5 != 0 { // every 5th page stays zero
            let words = served.page(p).assumingMemoryBound(to: UInt64.self)
            for w in 0..<basePageSize / 8 { words[w] = UInt64(p) &* 0x1000_0001 ^ UInt64(w) }
        }
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let region = ServedRegion(id: 1, name: "guest-ram", base: served.base, length: pages * basePageSize)
        let server = try SourceServer(listen: Endpoint(host: "127.0.0.1", port: 0), regions: [region], authentication: TestKeys.authentication, logger: logger)
        let serverThread = try KernelThread(name: "test-server") { server.run() }
        defer { server.stop(); serverThread.join() }

        let destination = try MemoryMapping.anonymous(length: pages * basePageSize)
        let uffd = try Userfaultfd()
        try uffd.negotiate([.eventRemove, .eventUnmap])
        try uffd.register(destination.range, mode: .missing)
        let client = try DestinationClient(source: server.listener.endpoint, clientName: "test", features: [.resume, .checksums], authentication: TestKeys.authentication)
        #expect(client.features.contains(.checksums))
        let descriptor = try client.region(selectedBy: nil)
        #expect(descriptor.length == UInt64(pages * basePageSize) && descriptor.name == "guest-ram")
        let resolver = try FaultResolver(uffd: uffd, region: descriptor,
                                         mappings: [RegionMapping(base: UInt64(UInt(bitPattern: destination.base)), size: UInt64(pages * basePageSize), regionOffset: 0, pageSize: basePageSize)],
                                         demand: client.demand, push: client.push, logger: logger)
        let report = Mutex<ResolveReport?>(nil)
        let failure = Mutex<String?>(nil)
        let resolving = try KernelThread(name: "test-resolver") {
            do {
                let r = try resolver.run()
                report.withLock { $0 = r }
            } catch {
                failure.withLock { $0 = "\(error)" }
            }
        }
        // Touch pages from this thread in a scattered order while the push runs.
        var bad = 0
        for i in 0..<pages {
            let p = (i &* 2654435761) % pages
            let expected = p % 5 == 0 ? 0 : UInt64(p) &* 0x1000_0001 ^ 1
            if touch(destination.page(p) + 8) != expected { bad += 1 }
        }
        resolving.join()
        client.close()
        #expect(failure.withLock { $0 } == nil, "\(failure.withLock { $0 } ?? "")")
        #expect(bad == 0)
        let r = try #require(report.withLock { $0 })
        #expect(r.installedPages + r.zeroPages == pages)
        // Every byte, not just the touched word.
        for p in 0..<pages {
            let words = destination.page(p).assumingMemoryBound(to: UInt64.self)
            for w in 0..<basePageSize / 8 where words[w] != (p % 5 == 0 ? 0 : UInt64(p) &* 0x1000_0001 ^ UInt64(w)) { bad += 1 }
        }
        #expect(bad == 0)
    }

    @Test("pre-copy of a process's own live memory: pages written after their round and between the last scan and the pause arrive fresh")
    func liveOwnMemory() throws {
        let pages = 8192 // 32 MiB
        let served = try MemoryMapping.anonymous(length: pages * basePageSize)
        func write(_ p: Int, _ version: UInt64) {
            let words = served.page(p).assumingMemoryBound(to: UInt64.self)
            for w in 0..<basePageSize / 8 { words[w] = UInt64(p) << 32 ^ UInt64(w) ^ version << 20 }
        }
        for p in 0..<pages { write(p, 1) }
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let tracker = try WriteTracker(ownRange: served.range)
        // The writer's last acts before it is paused: pages it writes here are written after the
        // last round's scan, so only the final scan can catch them.
        let lastWrites = [5, 6, 4000, 8191]
        let servedBase = UInt(bitPattern: served.base)
        var policy = ConvergencePolicy()
        policy.downtimeBudgetNanoseconds = 0
        policy.maxRounds = 2
        let rewritten = Atomic<Bool>(false)
        let live = LiveRegion(tracker: tracker, policy: policy) {
            // Pausing means no more writes: let the rewriter below finish first.
            while !rewritten.load(ordering: .acquiring) { sleepMilliseconds(1) }
            let memory = UnsafeMutableRawPointer(bitPattern: servedBase)!
            for p in lastWrites { memory.storeBytes(of: 0xFEED_0000 + UInt64(p), toByteOffset: p * basePageSize + 64, as: UInt64.self) }
        }
        let region = ServedRegion(id: 1, name: "live-ram", base: served.base, length: pages * basePageSize, live: live)
        let server = try SourceServer(listen: Endpoint(host: "127.0.0.1", port: 0), regions: [region], authentication: TestKeys.authentication, logger: logger)
        let serverThread = try KernelThread(name: "test-server") { server.run() }
        defer { server.stop(); serverThread.join() }
        // Writes after round 0 sent every page: rewrite a quarter of the pages. They are found by
        // round 1's scan or, if the policy switches first, by the final scan after the pause.
        let rewriter = try KernelThread(name: "test-writer") {
            while live.outcome.rounds.isEmpty { sleepMilliseconds(1) }
            let memory = UnsafeMutableRawPointer(bitPattern: servedBase)!
            for p in stride(from: 0, to: pages, by: 4) { memory.storeBytes(of: 0xAAAA_0000 + UInt64(p), toByteOffset: p * basePageSize + 128, as: UInt64.self) }
            rewritten.store(true, ordering: .releasing)
        }

        let client = try DestinationClient(source: server.listener.endpoint, clientName: "test", features: [.resume, .invalidation], authentication: TestKeys.authentication)
        let descriptor = try client.region(selectedBy: nil)
        #expect(descriptor.flags.contains(.live))
        var connections = SessionConnections(demand: client.demand, push: client.push)
        let staged = try StagedPages.receive(region: descriptor, connections: &connections, resumption: nil, logger: logger)
        rewriter.join()
        let outcome = live.outcome
        #expect(outcome.switched && outcome.rounds.first?.pagesSent == pages, "\(outcome)")
        #expect(outcome.rounds.reduce(0) { $0 + $1.dirtyPages } + outcome.finalDirtyPages >= Set(stride(from: 0, to: pages, by: 4)).union(lastWrites).count, "\(outcome)")
        #expect(outcome.finalDirtyPages >= lastWrites.count, "the final scan missed the writes made just before the pause: \(outcome)")
        // The source's memory is final now (the writer is "paused"): snapshot it.
        let expected = try MemoryMapping.anonymous(length: pages * basePageSize)
        expected.base.copyMemory(from: served.base, byteCount: pages * basePageSize)

        let resolved = try StagedResolve(staged, region: descriptor, pages: pages, expected: expected,
                                         demand: client.demand, push: client.push, logger: logger)
        client.close()
        #expect(resolved.failure == nil, "\(resolved.failure ?? "")")
        #expect(resolved.differing.isEmpty, "\(resolved.differing.count) pages differ from the source's final memory")
        for p in lastWrites {
            #expect(resolved.destination.page(p).load(fromByteOffset: 64, as: UInt64.self) == 0xFEED_0000 + UInt64(p))
        }
    }
}
