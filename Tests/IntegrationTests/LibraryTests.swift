import Logging
import PagerDestination
import PagerKernel
import PagerSource
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
        let server = try SourceServer(listen: Endpoint(host: "127.0.0.1", port: 0), regions: [region], logger: logger)
        let serverThread = try KernelThread(name: "test-server") { server.run() }
        defer { server.stop(); serverThread.join() }

        let destination = try MemoryMapping.anonymous(length: pages * basePageSize)
        let uffd = try Userfaultfd()
        try uffd.negotiate([.eventRemove, .eventUnmap])
        try uffd.register(destination.range, mode: .missing)
        let client = try DestinationClient(source: server.listener.endpoint, clientName: "test", features: [.resume, .checksums])
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
}
