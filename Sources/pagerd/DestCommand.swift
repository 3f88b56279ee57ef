import ArgumentParser
import Logging
import PagerCore
import PagerDestination
import PagerHandoff
import PagerKernel
import PagerOperations
import PagerReport
import PagerSource
import PagerTrust
import PagerWire
import Synchronization

struct DestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dest",
        abstract: "Resolve a workload's page faults by fetching its memory from a source.",
        discussion: """
        Waits on --uffd-socket for handoffs in Firecracker's format (a JSON array of \
        {"base_host_virt_addr", "size", "offset", "page_size"} with the userfaultfd attached \
        by SCM_RIGHTS), connects to the source for each, and resolves the workload's faults \
        while the rest of its memory streams in. If the source is lost, pages not yet fetched \
        are poisoned: the workload gets SIGBUS, never zeros. Prints a summary per migration.

        With --precopy (for a source serving live memory): connects at once, keeps the \
        pre-copy rounds in its own memory until the source switches to post-copy, then takes \
        one handoff; staged pages are installed locally, pages the source invalidated are \
        fetched on demand.
        """
    )

    @Option(help: "The source's ADDR:PORT.") var connect: String
    @Option(help: "Unix socket path to receive userfaultfd handoffs on (mode 0660).") var uffdSocket: String
    @Option(help: "Group of the handoff and control sockets (e.g. kvm, for workloads or QEMU run as an unprivileged user in it); default: this process's.")
    var socketGroup: String?
    @Option(help: "Region (id or name) handoffs map onto, when the source serves several.") var region: String?
    @Flag(help: "Exit after the first migration completes (exit status 1 if it failed).") var once = false
    @Option(help: "How faults fetch pages: tcp, or rdma (one-sided RDMA READ from a pagerd source --rdma; needs keys, an RDMA device, and pagerd built with the RDMA trait; pages RDMA cannot bring still come over TCP).")
    var transport = Transport.tcp
    @OptionGroup var device: RDMADeviceOption
    @Flag(help: "No background push: pages arrive only when touched or prefetched (for measuring demand paging).") var noPush = false
    @Flag(help: "No prefetch around faults: fetch exactly the faulting page.") var noPrefetch = false
    @Flag(help: "Run the background push at normal priority instead of on idle CPU only (for workloads that keep every CPU busy).") var normalPriorityPush = false
    @Option(help: "Fault threads: auto (real-time when this process may use one CPU only), realtime (SCHED_FIFO 1), normal.") var demandPriority = DemandPriority.auto
    @Option(help: "Declare the connections lost after this many milliseconds without a frame from the source while pages are outstanding (pings go every 250 ms of silence), then resume.") var stallTimeoutMs = 1_500
    @Option(help: "After a lost connection, faults wait this many seconds for the session to resume; then missing pages are poisoned (0: poison at once).") var reconnectTimeoutS = 60.0
    @Flag(help: "Ask the source for a CRC-32C of every 4 KiB page and check each before installing it.") var checksums = false
    @Flag(help: "Receive the source's pre-copy rounds before the handoff (one migration; implies --once).") var precopy = false
    @OptionGroup var keys: AuthenticationOptions
    @OptionGroup var operations: OperationsOptions
    @Flag(help: "Print each migration's summary as one JSON line (the status document's fields, see pagerd status --json) instead of text.")
    var json = false
    @Option(help: "Log level: trace, debug, info, warning, error.") var logLevel: String = "info"

    func validate() throws {
        guard Endpoint(connect) != nil else { throw ValidationError("--connect must be ADDR:PORT (IPv4), got \(connect)") }
        guard stallTimeoutMs >= 100 else { throw ValidationError("--stall-timeout-ms must be at least 100, got \(stallTimeoutMs)") }
        guard reconnectTimeoutS >= 0, reconnectTimeoutS <= 86_400 else { throw ValidationError("--reconnect-timeout-s must be 0 to 86400, got \(reconnectTimeoutS)") }
        try validateRDMA(transport == .rdma, "--transport rdma", keys: keys, precopy: precopy)
        try device.validate(transport: transport)
    }

    func run() throws {
        let logger = makeLogger("pagerd.dest", logLevel)
        let authentication = try keys.resolve(insecureMeans: InsecureConsequence.destination)
        // A crash or a fatal signal while this daemon holds a workload's memory poisons what is
        // missing first (see PoisonGuard): the workload gets SIGBUS, never zeros.
        try PoisonGuard.installFatalSignalHandlers()
        try startGuardian(logger)
        let listener = try HandoffListener(path: uffdSocket, group: socketGroup)
        let book = DestinationBook(role: "dest", source: connect)
        let interfaces = try operations.start(role: "dest", socketGroup: socketGroup, document: { book.document(version: pagerdVersion) },
                                              metrics: { book.metrics(version: pagerdVersion) }, logger: logger)
        defer { interfaces.finish() }
        let reporter = try ProgressReporter.start(book)
        defer { reporter?.stop() }
        let stopping = Atomic<Bool>(false)
        try TerminationSignals.start { signal in
            // The first signal stops new handoffs and lets migrations in progress finish; a
            // second one aborts them: what is not local yet is poisoned before the exit.
            if stopping.exchange(true, ordering: .acquiringAndReleasing) {
                let pages = PoisonGuard.poisonAll()
                logger.error("signal \(signal) again: migrations aborted, \(pages) pages not yet local \(PoisonGuard.fateOfMissingPages)")
                print("pagerd dest: aborted by signal \(signal): \(pages) pages not yet local \(PoisonGuard.fateOfMissingPages)")
                exitProcess(1)
            }
            logger.info("signal \(signal): no new handoffs; migrations in progress go on (signal again to abort them)")
            serviceNotifier.stopping(status: "no new handoffs (signal \(signal)); migrations in progress go on")
            listener.close()
        }
        if precopy {
            serviceNotifier.ready(status: "receiving pre-copy rounds from \(connect); the handoff comes after the switch")
            guard migratePrecopy(listener, authentication, Tracked(book), logger: logger) else { throw ExitCode(1) }
            return
        }
        logger.info("waiting for userfaultfd handoffs on \(uffdSocket); source \(connect)")
        serviceNotifier.ready(status: "waiting for userfaultfd handoffs on \(uffdSocket); source \(connect)")
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
            let tracked = Tracked(book)
            let work: @Sendable () -> Void = {
                if !migrate(handoff, authentication, tracked, logger: logger) { failures.add(1, ordering: .relaxed) }
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

    /// Offered in HELLO: INVALIDATE only makes sense to a destination that stages pre-copy.
    var features: Features {
        var f: Features = [.resume, .hugePages, .sparse]
        if checksums { f.insert(.checksums) }
        if precopy { f.insert(.invalidation) }
        if keys.encrypt { f.insert(.encryption) }
        if transport == .rdma { f.insert(.rdma) }
        return f
    }

    /// The session for a handoff: faults already wait, so a source that cannot be reached
    /// yet (not started, restarting, the network down) is retried like a lost connection, with
    /// backoff, within --reconnect-timeout-s. A source that answers and refuses is not.
    func firstConnection(_ authentication: PeerAuthentication, logger: Logger) throws -> DestinationClient {
        var backoff = Backoff(deadline: monotonicNanoseconds() + UInt64(reconnectTimeoutS * 1e9))
        var attempts = 0
        while true {
            attempts += 1
            do {
                return try DestinationClient(source: Endpoint(connect)!, clientName: "pagerd-dest", features: features,
                                             authentication: authentication, timeoutMilliseconds: attemptTimeoutMilliseconds(stall: stallTimeoutMs))
            } catch {
                guard FaultResolver.mayRetry(error) else { throw error }
                if attempts == 1 { logger.warning("cannot reach the source \(connect) (\(error)): retrying for up to \(Int(reconnectTimeoutS)) s while faults wait") }
                guard backoff.wait() else {
                    throw HandoffError(message: "the source \(connect) could not be reached in \(attempts) attempt(s) within \(Int(reconnectTimeoutS)) s (the last: \(error))")
                }
            }
        }
    }

    /// Pre-copy, then one handoff; returns false (after logging why) if it failed.
    func migratePrecopy(_ listener: HandoffListener, _ authentication: PeerAuthentication, _ tracked: Tracked, logger: Logger) -> Bool {
        do {
            let client = try DestinationClient(source: Endpoint(connect)!, clientName: "pagerd-dest", features: features,
                                               authentication: authentication)
            defer { client.close() }
            let region = try client.region(selectedBy: self.region)
            tracked.book.identify(tracked.id, session: client.session, region: region.name)
            tracked.progress.enter(.active)
            logger.info("session \(hex(client.session)) with \(connect): live region \(region.id) \"\(region.name)\" (\(region.length >> 20) MiB): receiving pre-copy rounds")
            for other in client.regions where other.id != region.id {
                try client.demand.send(.complete(region: other.id, residentBytes: 0))
            }
            var connections = SessionConnections(demand: client.demand, push: client.push)
            defer { connections.demand.shutdown(); connections.push.shutdown() }
            let resumption = reconnectTimeoutS > 0 ? PrecopyResumption(resumer: client.resumer, stallTimeoutMilliseconds: stallTimeoutMs,
                                                                      reconnectTimeoutMilliseconds: Int(reconnectTimeoutS * 1000)) : nil
            let staged = try StagedPages.receive(region: region, connections: &connections, resumption: resumption, logger: logger)
            tracked.progress.stagedBytes.store(UInt64(staged.stagedBytes), ordering: .relaxed)
            print("pagerd dest: pre-copy done after \(String(format: 1, Double(staged.nanoseconds) / 1e9)) s: \(staged.stagedBytes >> 20) MiB staged, \(staged.bytesReceived >> 20) MiB received as data, \(staged.invalidatedBytes >> 10) KiB invalidated")
            fflushStandardOutput()
            logger.info("switched to post-copy: waiting for the userfaultfd handoff on \(uffdSocket)")
            let handoff = try listener.accept()
            defer { try? handoff.connection.close() }
            return migrate(handoff, authentication, tracked, logger: logger, client: client, connections: connections, region: region, staged: staged)
        } catch {
            // Before the handoff nothing of the workload is here, and nothing was poisoned.
            let reason = (error as? ResolveError)?.cause ?? "\(error)"
            logger.error("pre-copy failed: \(reason)")
            print("pagerd dest: migration FAILED in pre-copy, before any handoff (the workload still runs on the source): \(reason)")
            fflushStandardOutput()
            tracked.book.finish(tracked.id, error: "pre-copy failed: \(reason)")
            return false
        }
    }

    /// Runs one migration; returns false (after logging why) if it failed.
    func migrate(_ handoff: Handoff, _ authentication: PeerAuthentication, _ tracked: Tracked, logger: Logger, client existing: DestinationClient? = nil,
                 connections current: SessionConnections? = nil, region chosen: RegionDescriptor? = nil, staged: StagedPages? = nil) -> Bool {
        let total = handoff.mappings.reduce(UInt64(0)) { $0 + $1.size }
        logger.info("handoff: \(handoff.mappings.count) mapping(s), \(total >> 20) MiB in \(handoff.mappings[0].pageSize >> 10) KiB pages")
        // From here on no other process can bring the workload its pages: every way out of
        // this function but "all local" (or "the workload is gone") poisons what is missing.
        let missing = handoff.guardMissingPages()
        serviceNotifier.status("migrating \(total >> 20) MiB from \(connect)")
        do {
            let client = try existing ?? firstConnection(authentication, logger: logger)
            defer { client.close() }
            let region = try chosen ?? client.region(selectedBy: self.region)
            tracked.book.identify(tracked.id, session: client.session, region: region.name)
            logger.info("session \(hex(client.session)) with \(connect) (\(client.features.protectionDescription)): region \(region.id) \"\(region.name)\" (\(region.length >> 20) MiB)")
            var configuration = FaultResolver.Configuration()
            configuration.prefetch = !noPrefetch
            configuration.backgroundPush = !normalPriorityPush
            configuration.urgentDemand = demandPriority.isRealtime
            configuration.stallTimeoutMilliseconds = stallTimeoutMs
            // After SWITCHED what is staged is current: a resume reports it held like the rest.
            if reconnectTimeoutS > 0 {
                configuration.resumer = client.resumer
                configuration.reconnectTimeoutMilliseconds = Int(reconnectTimeoutS * 1000)
            }
            configuration.otherRegions = client.regions.map(\.id)
            configuration.workloadConnection = handoff.connection
            configuration.staged = staged
            configuration.poisonGuard = missing
            configuration.progress = tracked.progress
            configuration.rdmaNegotiated = client.features.contains(.rdma)
            if transport == .rdma { (configuration.pageReads, configuration.pushReads) = connectReads(client, push: !noPush, device: device.rdmaDevice, logger: logger) }
            let connections = current ?? SessionConnections(demand: client.demand, push: client.push)
            let resolver = try FaultResolver(uffd: handoff.uffd, region: region, mappings: handoff.mappings,
                                             demand: connections.demand, push: noPush ? nil : connections.push, configuration: configuration, logger: logger)
            let r = try resolver.run()
            missing.release()
            let ended = tracked.book.finish(tracked.id, error: nil)
            if json {
                printJSON(tracked.book, ended)
                return true
            }
            serviceNotifier.status("last migration: \(r.pages) pages local after \(String(format: 1, r.seconds)) s; waiting for handoffs")
            let latency = LatencySummary(samples: r.faultLatencies)
            let mib = Double(r.pages * r.pageSize) / Double(1 << 20)
            let gone = r.pagesNeverFetched - r.pagesUnmappedUnfetched
            let ending = (gone > 0 ? "; the workload exited with \(gone) pages never needed" : "")
                + (r.pagesUnmappedUnfetched > 0 ? "; the workload unmapped \(r.pagesUnmappedUnfetched) pages before it needed them" : "")
            print("""
            pagerd dest: \(r.pages) pages (\(Int(mib)) MiB) \(r.pagesNeverFetched > 0 ? "mapped" : "local") after \(String(format: 1, r.seconds)) s (\(String(format: 1, mib / max(r.seconds, 1e-9))) MiB/s)\(ending)
              faults            \(r.faults), fault to install: \(latency)
              requests          \(r.demandRequests) demand, \(r.prefetchRequests) prefetch, \(r.hintedPages) pages hinted, \(r.sweepRequests) final sweep
              pages installed   \(r.installedPages) with data, \(r.zeroPages) zero, \(r.duplicatePages) duplicates dropped, \(r.discardedPages) discarded by the workload
              pages arrived     \(r.arrivals.demand) by demand, \(r.arrivals.prefetch) by prefetch, \(r.arrivals.push) by push, \(r.arrivals.staged) staged by pre-copy
              bytes received    \(r.bytesReceived >> 20) MiB\(transport == .rdma ? "; \(r.reads) RDMA READs brought \(r.readBytes >> 10) KiB, the push's \(r.pushReads) READs \(r.pushReadBytes >> 10) KiB, \(r.readsAskedAgain) requests asked again over TCP" : "")
              outages           \(outageSummary((staged?.outages ?? []) + r.outages))
            """)
            // stdout is a file or the journal's pipe for a daemon: a summary must not wait in
            // the buffer for the process to exit.
            fflushStandardOutput()
            return true
        } catch {
            let poisoned = missing.poisonMissing()
            tracked.progress.pagesPoisoned.store(poisoned, ordering: .relaxed)
            let ended = tracked.book.finish(tracked.id, error: "\(error)")
            serviceNotifier.status("last migration FAILED: \(error)")
            logger.error("migration failed: \(error)")
            if json { printJSON(tracked.book, ended) } else {
                print("pagerd dest: migration FAILED: \(error); \(poisoned) pages not yet local \(PoisonGuard.fateOfMissingPages)")
            }
            fflushStandardOutput()
            return false
        }
    }
}

/// The outages of a migration as the summary prints them.
func outageSummary(_ outages: [Outage]) -> String {
    guard !outages.isEmpty else { return "none" }
    let resumed = outages.compactMap(\.resumedAfterNanoseconds)
    let longest = resumed.max().map { "longest \($0 / 1_000_000) ms" } ?? ""
    let again = outages.reduce(0) { $0 + $1.faultsAskedAgain }
    let inFlight = outages.reduce(0) { $0 + $1.pagesInFlight }
    let waited = outages.map(\.longestFaultWaitNanoseconds).max() ?? 0
    return "\(outages.count) (connections lost, \(resumed.count) resumed, \(longest)), \(again) waiting faults asked for again, \(inFlight) pages in flight back to missing, a fault waited up to \(waited / 1_000_000) ms; first: \(outages[0].cause)"
}

/// One migration as the daemon's status book has it.
struct Tracked: Sendable {
    let book: DestinationBook
    let id: Int
    let progress: MigrationProgress

    init(_ book: DestinationBook) {
        self.book = book
        (id, progress) = book.begin()
    }
}

/// A migration's summary as one JSON line (`pagerd dest --json`).
func printJSON(_ book: DestinationBook, _ entry: DestinationBook.Entry?) {
    guard let entry else { return }
    print(String(decoding: JSONWriter.encode(book.document(of: entry, version: pagerdVersion)), as: UTF8.self))
    fflushStandardOutput()
}
