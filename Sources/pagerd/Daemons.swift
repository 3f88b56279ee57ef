import ArgumentParser
import Logging
import PagerBenchKit
import PagerDestination
import PagerKernel
import PagerSource
import PagerWire
import Synchronization

struct SourceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "source",
        abstract: "Serve memory regions to destinations.",
        discussion: """
        Serves each --region file (a tmpfs file such as /dev/shm/vm.ram, a hugetlbfs file, or a
        snapshot file) to any number of destinations. Demand requests are answered first, on
        their own connection; every other page streams on a second connection; holes and
        zero pages are sent as zero ranges, never as bytes. Stops on SIGTERM or SIGINT and
        prints what it served.
        """
    )

    @Option(help: "Address and port to listen on, e.g. 0.0.0.0:7070.") var listen: String
    @Option(name: .customLong("region"), help: "A file to serve (repeatable); region ids are 1, 2, ... in order.")
    var regions: [String]
    @Option(help: "Close connections that send no HELLO within this many milliseconds.") var handshakeTimeoutMs = 10_000
    @Option(help: "Log level: trace, debug, info, warning, error.") var logLevel: String = "info"

    func validate() throws {
        guard Endpoint(listen) != nil else { throw ValidationError("--listen must be ADDR:PORT (IPv4), got \(listen)") }
        guard !regions.isEmpty else { throw ValidationError("give at least one --region FILE") }
    }

    func run() throws {
        let logger = makeLogger("pagerd.source", logLevel)
        var served: [ServedRegion] = []
        for (i, path) in regions.enumerated() { served.append(try ServedRegion(id: UInt32(i + 1), path: path)) }
        let server = try SourceServer(listen: Endpoint(listen)!, regions: served, logger: logger)
        server.handshakeTimeoutMilliseconds = handshakeTimeoutMs
        try TerminationSignals.start { signal in
            logger.info("signal \(signal): stopping")
            server.stop()
        }
        server.run()
        let c = server.counts
        print("pagerd source: \(c.sessions) session(s), \(c.demandRequests) demand and \(c.prefetchRequests) prefetch requests, \(c.bytesSent >> 20) MiB sent as bytes, \(c.zeroBytes >> 20) MiB as zero ranges, \(c.failedSessions) session(s) ended by errors")
    }
}

struct DestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dest",
        abstract: "Resolve a workload's page faults by fetching its memory from a source.",
        discussion: """
        Waits on --uffd-socket for handoffs in Firecracker's format (a JSON array of
        {"base_host_virt_addr", "size", "offset", "page_size"} with the userfaultfd attached
        by SCM_RIGHTS), connects to the source for each, and resolves the workload's faults
        while the rest of its memory streams in. If the source is lost, pages not yet fetched
        are poisoned: the workload gets SIGBUS, never zeros. Prints a summary per migration.
        """
    )

    @Option(help: "The source's ADDR:PORT.") var connect: String
    @Option(help: "Unix socket path to receive userfaultfd handoffs on.") var uffdSocket: String
    @Option(help: "Region (id or name) handoffs map onto, when the source serves several.") var region: String?
    @Flag(help: "Exit after the first migration completes (exit status 1 if it failed).") var once = false
    @Flag(help: "No background push: pages arrive only when touched or prefetched (for measuring demand paging).") var noPush = false
    @Flag(help: "No prefetch around faults: fetch exactly the faulting page.") var noPrefetch = false
    @Option(help: "Declare the source lost after this many milliseconds without a frame while pages are outstanding.") var stallTimeoutMs = 10_000
    @Flag(help: "Ask the source for a CRC-32C of every 4 KiB page and check each before installing it.") var checksums = false
    @Option(help: "Log level: trace, debug, info, warning, error.") var logLevel: String = "info"

    func validate() throws {
        guard Endpoint(connect) != nil else { throw ValidationError("--connect must be ADDR:PORT (IPv4), got \(connect)") }
    }

    func run() throws {
        let logger = makeLogger("pagerd.dest", logLevel)
        let listener = try HandoffListener(path: uffdSocket)
        let stopping = Atomic<Bool>(false)
        try TerminationSignals.start { signal in
            logger.info("signal \(signal): no new handoffs")
            stopping.store(true, ordering: .releasing)
            listener.close()
        }
        logger.info("waiting for userfaultfd handoffs on \(uffdSocket); source \(connect)")
        let failures = Atomic<Int>(0)
        var workers: [KernelThread] = []
        while !stopping.load(ordering: .acquiring) {
            let handoff: Handoff
            do { handoff = try listener.accept() } catch {
                if stopping.load(ordering: .acquiring) { break }
                logger.error("handoff refused: \(error)")
                if once { throw ExitCode(1) }
                continue
            }
            let work: @Sendable () -> Void = {
                if !migrate(handoff, logger: logger) { failures.add(1, ordering: .relaxed) }
                try? handoff.connection.close()
            }
            if once {
                work()
                break
            }
            workers.append(try KernelThread(name: "dst-migration", work))
        }
        for w in workers { w.join() }
        if failures.load(ordering: .relaxed) > 0 { throw ExitCode(1) }
    }

    /// Runs one migration; returns false (after logging why) if it failed.
    func migrate(_ handoff: Handoff, logger: Logger) -> Bool {
        let total = handoff.mappings.reduce(UInt64(0)) { $0 + $1.size }
        logger.info("handoff: \(handoff.mappings.count) mapping(s), \(total >> 20) MiB in \(handoff.mappings[0].pageSize >> 10) KiB pages")
        do {
            let client = try DestinationClient(source: Endpoint(connect)!, clientName: "pagerd-dest",
                                               features: checksums ? [.resume, .hugePages, .checksums] : [.resume, .hugePages])
            defer { client.close() }
            let region = try client.region(selectedBy: self.region)
            logger.info("session \(hex(client.session)) with \(connect): region \(region.id) \"\(region.name)\" (\(region.length >> 20) MiB)")
            let resolver = try FaultResolver(uffd: handoff.uffd, region: region, mappings: handoff.mappings,
                                             demand: client.demand, push: noPush ? nil : client.push, logger: logger)
            resolver.prefetch = !noPrefetch
            resolver.stallTimeoutMilliseconds = stallTimeoutMs
            resolver.otherRegions = client.regions.map(\.id)
            resolver.workloadConnection = handoff.connection
            let r = try resolver.run()
            let latency = LatencySummary(samples: r.faultLatencies)
            let mib = Double(r.pages * r.pageSize) / Double(1 << 20)
            let ending = r.pagesNeverFetched > 0 ? "; the workload exited with \(r.pagesNeverFetched) pages never needed" : ""
            print("""
            pagerd dest: \(r.pages) pages (\(Int(mib)) MiB) \(r.pagesNeverFetched > 0 ? "mapped" : "local") after \(String(format1: r.seconds)) s (\(String(format1: mib / max(r.seconds, 1e-9))) MiB/s)\(ending)
              faults            \(r.faults), fault to install: \(latency)
              requests          \(r.demandRequests) demand, \(r.prefetchRequests) prefetch, \(r.hintedPages) pages hinted, \(r.sweepRequests) final sweep
              pages installed   \(r.installedPages) with data, \(r.zeroPages) zero, \(r.duplicatePages) duplicates dropped, \(r.discardedPages) discarded by the workload
              bytes received    \(r.bytesReceived >> 20) MiB
            """)
            return true
        } catch {
            logger.error("migration failed: \(error)")
            print("pagerd dest: migration FAILED: \(error)")
            return false
        }
    }
}

func makeLogger(_ label: String, _ level: String) -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = Logger.Level(rawValue: level) ?? .info
    return logger
}
