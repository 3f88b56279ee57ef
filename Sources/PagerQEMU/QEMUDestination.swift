import Logging
import PagerCore
import PagerDestination
import PagerKernel
import PagerSource
import PagerTrust
import PagerWire
import Synchronization
import SystemPackage

/// The destination side: takes QEMU's guest RAM from the preload library's handoff, pulls it
/// from the source daemon on demand and in the background, and drives the incoming migration.
public struct QEMUDestination {
    public var qmpPath: String
    public var ram: String
    public var source: Endpoint
    public var uffdSocket: String
    /// Where this QEMU listens for the device state (`migrate-incoming` URI), e.g. tcp:0:4444;
    /// nil when something else drives the migration (libvirt issues `migrate-incoming` and
    /// `cont` itself): this daemon then only sets `x-ignore-shared` and serves the faults.
    public var incoming: String?
    public var logger: Logger
    /// How the source is authenticated (see ``DestinationClient``).
    public var authentication: PeerAuthentication
    /// Ask for encryption and accept only a source that encrypts.
    public var encrypt = false
    /// Receive the source's pre-copy rounds (`pagerd qemu-source --track-socket`) into this
    /// daemon's memory before the switch; they are installed locally after it.
    public var precopy = false
    /// Real-time fault threads by default: the guest's vCPUs keep this host's CPUs busy, and a
    /// fault must not wait for a vCPU's time slice (see ``DemandPriority``).
    public var demandPriority = DemandPriority.realtime
    /// Group of the handoff socket (QEMU's, when libvirt runs it as an unprivileged user).
    public var socketGroup: String?
    /// The migration's live counters, for `pagerd status` and the metrics.
    public var progress: MigrationProgress?
    /// Told the session's id and the region's name once the source answered.
    public var onSession: (@Sendable (UInt64, String) -> Void)?
    /// Faults and the push by one-sided READ (`--transport rdma`): offers `rdma` and, for the
    /// session, connects the reads for faults and for the push (nil where one could not be
    /// set up: those pages come over TCP).
    public var rdmaReads: ((DestinationClient) -> (faults: (any PageReads)?, push: (any PageReads)?))?

    public init(qmpPath: String, ram: String, source: Endpoint, uffdSocket: String, incoming: String?,
                authentication: PeerAuthentication, logger: Logger, precopy: Bool = false) {
        self.authentication = authentication
        self.qmpPath = qmpPath
        self.ram = ram
        self.source = source
        self.uffdSocket = uffdSocket
        self.incoming = incoming
        self.logger = logger
        self.precopy = precopy
    }

    public struct Report: Sendable {
        /// From `migrate-incoming` (following libvirt: from QEMU's handoff) until the guest ran again on this host.
        public var untilRunningSeconds: Double
        /// From `migrate-incoming` until every page of guest RAM was local.
        public var untilLocalSeconds: Double
        public var resolve: ResolveReport
        /// `monotonicNanoseconds()` when every page was local.
        public var allLocalAt: UInt64
        /// With pre-copy: what was staged before the switch.
        public var staged: (bytes: UInt64, invalidatedBytes: UInt64, seconds: Double)?
    }

    /// Waits for QEMU's handoff (start QEMU with the preload library after calling this),
    /// then runs the incoming migration to the end.
    /// `onCancel` receives a function that stops the migration (e.g. on SIGTERM): the pages
    /// not yet local are poisoned, so the guest gets SIGBUS there instead of zeros.
    public func run(listening: () -> Void = {}, onCancel: (@escaping @Sendable () -> Void) -> Void = { _ in }) throws -> Report {
        let listener = try HandoffListener(path: uffdSocket, group: socketGroup)
        listening()
        logger.info("waiting for QEMU's guest RAM on \(uffdSocket) (QEMU with LD_PRELOAD=libpager-preload.so PAGER_RAM_PATH=\(ram) PAGER_UFFD_SOCKET=\(uffdSocket))")
        let handoff = try listener.accept()
        defer { try? handoff.connection.close() }
        let total = handoff.mappings.reduce(0) { $0 + $1.size }
        logger.info("QEMU handed over \(total >> 20) MiB of guest RAM in \(handoff.mappings[0].pageSize >> 10) KiB pages")
        // Nothing but this function can bring the guest its RAM: any way out of it before every
        // page is local (an error, a signal, a crash) poisons what is missing, so that a guest
        // resumed here gets SIGBUS instead of hanging, and never zeros.
        let missing = handoff.guardMissingPages()
        defer {
            if !missing.isReleased {
                let pages = missing.poisonMissing()
                progress?.pagesPoisoned.store(pages, ordering: .relaxed)
                progress?.enter(.failed)
                logger.error("\(pages) pages of guest RAM here not yet local \(PoisonGuard.fateOfMissingPages)")
            }
        }
        let cancelled = Atomic<Bool>(false)
        let current = Mutex<DestinationClient?>(nil)
        let resolving = Mutex<FaultResolver?>(nil)
        onCancel {
            cancelled.store(true, ordering: .releasing)
            // Not a lost connection to resume: the migration ends, poisoning what is missing.
            resolving.withLock { $0 }?.abort("stopped by a signal")
            current.withLock { $0 }?.close()
        }
        let qmp = try QMP(path: qmpPath)
        // First: following libvirt, the source's stream may come soon after QEMU starts, and
        // it parses differently with x-ignore-shared (a stream that came first fails loudly).
        try qmp.execute("migrate-set-capabilities", #"{"capabilities":[{"capability":"x-ignore-shared","state":true}]}"#)
        try checkGuestRAM(qmp, ram: ram)
        let started = monotonicNanoseconds()
        if let incoming {
            try qmp.execute("migrate-incoming", "{\"uri\":\"\(incoming)\"}")
            logger.info("incoming migration on \(incoming)")
        } else {
            logger.info("following the incoming migration its manager (libvirt) drives; x-ignore-shared set")
        }
        let client = try connectToSource(unless: cancelled)
        logger.info("session \(hex(client.session)) with the source \(source) (\(client.features.protectionDescription))")
        current.withLock { $0 = client }
        if cancelled.load(ordering: .acquiring) { throw QEMUError("stopped by a signal") }
        var clientOpen = true
        defer { if clientOpen { client.close() } }
        let region = try client.region(selectedBy: nil)
        onSession?(client.session, region.name)
        // Before pre-copy stages anything sized by the region: it must be this guest RAM's.
        do { try Announcement.check(region: region, serves: handoff.mappings) } catch {
            throw QEMUError("\(error) (the source serves \(region.length >> 20) MiB, QEMU here has \(total >> 20) MiB of guest RAM: give both the same size)")
        }
        var staged: StagedPages?
        var connections = SessionConnections(demand: client.demand, push: client.push)
        defer { connections.demand.shutdown(); connections.push.shutdown() }
        if precopy {
            progress?.enter(.active)
            logger.info("receiving pre-copy rounds of guest RAM (the guest still runs on the source)")
            // The guest may already run here (the source stops it at the switch) and fault:
            // a failure poisons all of its RAM (see above).
            // A lost connection resumes as in post-copy (the stall timeout as long: see below).
            let resumption = PrecopyResumption(resumer: client.resumer, stallTimeoutMilliseconds: 120_000, reconnectTimeoutMilliseconds: 60_000)
            do { staged = try StagedPages.receive(region: region, connections: &connections, resumption: resumption, logger: logger) } catch {
                throw QEMUError("pre-copy failed: \(error)")
            }
        }
        var settings = configuration(staged: staged, connection: handoff.connection, guard: missing)
        settings.progress = progress
        // After SWITCHED what is staged is current: a resume reports it held like the rest.
        settings.resumer = client.resumer
        settings.rdmaNegotiated = client.features.contains(.rdma)
        if let rdmaReads { (settings.pageReads, settings.pushReads) = rdmaReads(client) }
        let resolver = try FaultResolver(uffd: handoff.uffd, region: region, mappings: handoff.mappings,
                                         demand: connections.demand, push: connections.push, configuration: settings, logger: logger)
        resolving.withLock { $0 = resolver }
        if cancelled.load(ordering: .acquiring) { resolver.abort("stopped by a signal") }
        let outcome = Mutex<Result<ResolveReport, ResolveError>?>(nil)
        let resolverThread = try KernelThread(name: "dst-resolver") {
            let r: Result<ResolveReport, ResolveError>
            do throws(ResolveError) { r = .success(try resolver.run()) } catch { r = .failure(error) }
            outcome.withLock { $0 = r }
        }
        defer {
            // On an error below: the resolver ends, poisoning what is missing (the guest gets
            // SIGBUS there, never zeros), and returns.
            resolver.abort("the QEMU destination stopped")
            client.close()
            clientOpen = false
            resolverThread.join()
        }
        let runningAt = try waitUntilGuestRuns(qmp, unless: { outcome.withLock { $0 } })
        logger.info("guest running here after \(Double(runningAt - started) / 1e6) ms; its RAM arrives on demand and in the background")
        resolverThread.join()
        guard let result = outcome.withLock({ $0 }) else { throw QEMUError("the resolver ended without a result") }
        switch result {
        case .failure(let e): throw QEMUError("paging guest RAM failed: \(e)")
        case .success(let r):
            missing.release()
            // The preload library's fence (this guest may move on) waits for these words.
            do { try UnixSocket.send(handoff.connection, bytes: Array(#"{"all_local":true}"#.utf8) + [0x0A], descriptors: []) } catch {
                logger.warning("could not tell QEMU's preload library that every page is local (\(error)): this guest cannot be fenced as a migration source until restarted")
            }
            let now = monotonicNanoseconds()
            return Report(untilRunningSeconds: Double(runningAt - started) / 1e9,
                          untilLocalSeconds: Double(now - started) / 1e9, resolve: r, allLocalAt: now,
                          staged: staged.map { ($0.stagedBytes, $0.invalidatedBytes, Double($0.nanoseconds) / 1e9) })
        }
    }

    /// Connects to the source daemon: `pagerd qemu-source` may start after this QEMU, so it
    /// keeps trying for a minute, every 2 ms (the guest may resume here within milliseconds of
    /// the source daemon listening, and its first faults wait for this connection). A source
    /// that answers and refuses (another key, another version) is not tried again.
    private func connectToSource(unless cancelled: borrowing Atomic<Bool>) throws -> DestinationClient {
        let deadline = monotonicNanoseconds() + 60_000_000_000
        while true {
            if cancelled.load(ordering: .acquiring) { throw QEMUError("stopped by a signal before the source answered") }
            do {
                return try DestinationClient(source: source, clientName: "pagerd-qemu-dest",
                                             features: Features([.resume, .hugePages, .sparse]).union(precopy ? .invalidation : [])
                                                 .union(encrypt ? .encryption : []).union(rdmaReads != nil ? .rdma : []),
                                             authentication: authentication, timeoutMilliseconds: 2_000)
            } catch {
                guard FaultResolver.mayRetry(error) else { throw QEMUError("the source pagerd at \(source) refused the session: \(error)") }
                if monotonicNanoseconds() > deadline { throw QEMUError("the source pagerd at \(source) does not answer: \(error)") }
                sleepMilliseconds(2)
            }
        }
    }

    /// How the resolver runs for a guest.
    private func configuration(staged: StagedPages?, connection: FileDescriptor, guard missing: PoisonGuard) -> FaultResolver.Configuration {
        var configuration = FaultResolver.Configuration()
        configuration.poisonGuard = missing
        configuration.staged = staged
        configuration.urgentDemand = demandPriority.isRealtime
        // The source holds pages until its VM stops; until then only silence can come.
        configuration.stallTimeoutMilliseconds = 120_000
        // A guest's vCPU threads keep their CPUs busy: a push that only uses idle CPU could
        // starve for the whole run. Compete fairly instead, as QEMU's own migration thread does.
        configuration.backgroundPush = false
        configuration.workloadConnection = connection
        return configuration
    }

    /// Waits until the guest runs here (QMP `RESUME`, or a completed incoming migration, then
    /// `cont` if needed: not when following, the manager resumes it); returns when. Throws if
    /// the migration or the resolver failed first.
    private func waitUntilGuestRuns(_ qmp: QMP, unless resolved: () -> Result<ResolveReport, ResolveError>?) throws -> UInt64 {
        while true {
            if case .failure(let e)? = resolved() { throw QEMUError("paging guest RAM failed: \(e)") }
            if try qmp.waitForEvent(["RESUME"], timeoutMilliseconds: 20) != nil { return monotonicNanoseconds() }
            let status = try qmp.migrationStatus()
            if status == "failed" || status == "cancelled" { throw QEMUError("the incoming migration \(status)") }
            if status == "completed" {
                if case .bool(true)? = try qmp.execute("query-status")["running"] { return monotonicNanoseconds() }
                if incoming != nil { try qmp.execute("cont") }
            }
        }
    }
}
