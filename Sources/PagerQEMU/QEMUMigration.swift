import Logging
import PagerDestination
import PagerKernel
import PagerSource
import PagerWire
import Synchronization

/// Checks that `ram` is the guest RAM of the QEMU behind `qmp`, mapped shared from a named
/// file (what `x-ignore-shared` skips and what the pager can serve), and that the memory
/// backend does not preallocate.
func checkGuestRAM(_ qmp: QMP, ram: String) throws {
    let maps = try readWholeFile("/proc/\(qmp.pid)/maps")
    let lines = maps.split(separator: "\n").filter { $0.hasSuffix(" " + ram) }
    guard !lines.isEmpty else {
        throw QEMUError("QEMU (pid \(qmp.pid)) has no mapping of \(ram): give it -object memory-backend-file,mem-path=\(ram),share=on and -machine memory-backend=...")
    }
    guard lines.allSatisfy({ $0.split(separator: " ").dropFirst().first?.hasSuffix("s") == true }) else {
        throw QEMUError("QEMU maps \(ram) privately: the backend needs share=on (a private mapping is neither skipped by x-ignore-shared nor served)")
    }
    if case .array(let memdevs) = try qmp.execute("query-memdev") {
        for m in memdevs where m["prealloc"] == .bool(true) {
            throw QEMUError("memory backend \(m["id"].map(describe) ?? "?") has prealloc=on: QEMU would touch every page before the source stops; remove it")
        }
    }
}

/// The source side: serves the guest's RAM file with `pagerd`'s server, migrates only device
/// state (`x-ignore-shared`), and lets page data flow only once the source VM has stopped.
public struct QEMUSource {
    public var qmpPath: String
    public var ram: String
    public var listen: Endpoint
    /// Where the destination QEMU listens (`migrate` URI), e.g. tcp:198.18.0.2:4444.
    public var migrateTo: String
    public var logger: Logger

    public init(qmpPath: String, ram: String, listen: Endpoint, migrateTo: String, logger: Logger) {
        self.qmpPath = qmpPath
        self.ram = ram
        self.listen = listen
        self.migrateTo = migrateTo
        self.logger = logger
    }

    public struct Report: Sendable {
        /// From `migrate` until QEMU reported the migration completed (device state only).
        public var deviceStateSeconds: Double
        /// From `migrate` until the source VM stopped (pages flowed from then on).
        public var untilStopSeconds: Double
        public var counts: SourceServer.Counters
        /// `monotonicNanoseconds()` when `migrate` was issued (comparable across processes
        /// on one host: CLOCK_MONOTONIC is system-wide).
        public var migrateIssuedAt: UInt64
    }

    /// Runs the migration and serves pages until the destination holds them all.
    public func run(serverReady: (SourceServer) -> Void = { _ in }) throws -> Report {
        let qmp = try QMP(path: qmpPath)
        try checkGuestRAM(qmp, ram: ram)
        let region = try ServedRegion(id: 1, path: ram)
        let server = try SourceServer(listen: listen, regions: [region], logger: logger)
        server.hold() // not one page before the VM stops
        let serving = try KernelThread(name: "src-accept") { server.run() }
        defer {
            server.stop()
            serving.join()
        }
        serverReady(server)
        try qmp.execute("migrate-set-capabilities", #"{"capabilities":[{"capability":"x-ignore-shared","state":true}]}"#)
        let started = monotonicNanoseconds()
        logger.info("migrating device state to \(migrateTo) (guest RAM is skipped: x-ignore-shared); pages are held until the VM stops")
        try qmp.execute("migrate", "{\"uri\":\"\(migrateTo)\"}")
        // STOP comes when QEMU pauses the VM for its final stage; from then on RAM is final.
        var stoppedAt: UInt64?
        var completedAt: UInt64?
        while completedAt == nil {
            let status = try qmp.migrationStatus()
            if stoppedAt == nil, let e = try qmp.waitForEvent(["STOP"], timeoutMilliseconds: 5), e["event"] != nil {
                stoppedAt = monotonicNanoseconds()
                try region.refreshExtents() // the guest wrote its RAM until now
                server.release()
                logger.info("source VM stopped after \(Double(stoppedAt! - started) / 1e6) ms: serving its RAM (from \(Double(monotonicNanoseconds() - stoppedAt!) / 1e6) ms later)")
            }
            switch status {
            case "completed":
                completedAt = monotonicNanoseconds()
            case "failed", "cancelled":
                let why = (try? qmp.execute("query-migrate")["error-desc"]).flatMap { $0 }.map(describe) ?? "no reason given"
                // The destination QEMU may not be listening yet: retry a refused connection for
                // 30 s (nothing ran on the destination, and the VM here never stopped).
                if stoppedAt == nil && why.contains("Connection refused") && monotonicNanoseconds() - started < 30_000_000_000 {
                    sleepMilliseconds(100)
                    try qmp.execute("migrate", "{\"uri\":\"\(migrateTo)\"}")
                    continue
                }
                throw QEMUError("QEMU's migration \(status) (\(why)); the source VM's RAM was never served")
            default:
                break
            }
        }
        if stoppedAt == nil {
            // A completed migration has stopped the VM, even if the STOP event was missed.
            guard case .bool(false)? = try qmp.execute("query-status")["running"] else {
                throw QEMUError("QEMU reports the migration completed but the source VM still runs: refusing to serve its RAM")
            }
            stoppedAt = monotonicNanoseconds()
            try region.refreshExtents()
            server.release()
        }
        logger.info("device state migrated in \(Double(completedAt! - started) / 1e6) ms; serving pages until the destination has all")
        // Serve until the destination has every page and has gone; a destination that never
        // connects within a minute of the switch is an error (its guest would hang).
        let connectDeadline = monotonicNanoseconds() + 60_000_000_000
        while server.counts.sessions == 0 || server.activeSessions > 0 {
            if server.counts.sessions == 0 && monotonicNanoseconds() > connectDeadline {
                throw QEMUError("no destination pagerd connected within 60 s of the switch: the destination guest cannot get its RAM")
            }
            sleepMilliseconds(10)
        }
        return Report(deviceStateSeconds: Double(completedAt! - started) / 1e9, untilStopSeconds: Double(stoppedAt! - started) / 1e9,
                      counts: server.counts, migrateIssuedAt: started)
    }
}

/// The destination side: takes QEMU's guest RAM from the preload library's handoff, pulls it
/// from the source daemon on demand and in the background, and drives the incoming migration.
public struct QEMUDestination {
    public var qmpPath: String
    public var ram: String
    public var source: Endpoint
    public var uffdSocket: String
    /// Where this QEMU listens for the device state (`migrate-incoming` URI), e.g. tcp:0:4444.
    public var incoming: String
    public var logger: Logger

    public init(qmpPath: String, ram: String, source: Endpoint, uffdSocket: String, incoming: String, logger: Logger) {
        self.qmpPath = qmpPath
        self.ram = ram
        self.source = source
        self.uffdSocket = uffdSocket
        self.incoming = incoming
        self.logger = logger
    }

    public struct Report: Sendable {
        /// From `migrate-incoming` until the guest ran again on this host.
        public var untilRunningSeconds: Double
        /// From `migrate-incoming` until every page of guest RAM was local.
        public var untilLocalSeconds: Double
        public var resolve: ResolveReport
        /// `monotonicNanoseconds()` when every page was local.
        public var allLocalAt: UInt64
    }

    /// Waits for QEMU's handoff (start QEMU with the preload library after calling this),
    /// then runs the incoming migration to the end.
    /// `onCancel` receives a function that stops the migration (e.g. on SIGTERM): the pages
    /// not yet local are poisoned, so the guest gets SIGBUS there instead of zeros.
    public func run(listening: () -> Void = {}, onCancel: (@escaping @Sendable () -> Void) -> Void = { _ in }) throws -> Report {
        let listener = try HandoffListener(path: uffdSocket)
        listening()
        logger.info("waiting for QEMU's guest RAM on \(uffdSocket) (QEMU with LD_PRELOAD=libpager-preload.so PAGER_RAM_PATH=\(ram) PAGER_UFFD_SOCKET=\(uffdSocket))")
        let handoff = try listener.accept()
        defer { try? handoff.connection.close() }
        let total = handoff.mappings.reduce(0) { $0 + $1.size }
        logger.info("QEMU handed over \(total >> 20) MiB of guest RAM in \(handoff.mappings[0].pageSize >> 10) KiB pages")
        let qmp = try QMP(path: qmpPath)
        try checkGuestRAM(qmp, ram: ram)
        try qmp.execute("migrate-set-capabilities", #"{"capabilities":[{"capability":"x-ignore-shared","state":true}]}"#)
        let started = monotonicNanoseconds()
        try qmp.execute("migrate-incoming", "{\"uri\":\"\(incoming)\"}")
        logger.info("incoming migration on \(incoming)")
        // pagerd qemu-source may start after this QEMU: keep trying for a minute.
        var connected: DestinationClient?
        let deadline = monotonicNanoseconds() + 60_000_000_000
        while connected == nil {
            do { connected = try DestinationClient(source: source, clientName: "pagerd-qemu-dest") } catch {
                if monotonicNanoseconds() > deadline { throw QEMUError("the source pagerd at \(source) does not answer: \(error)") }
                // Retry often: the guest may resume here within milliseconds of the source
                // daemon listening, and its first faults wait for this connection.
                sleepMilliseconds(2)
            }
        }
        let client = connected!
        onCancel { client.close() }
        var clientOpen = true
        defer { if clientOpen { client.close() } }
        let region = try client.region(selectedBy: nil)
        guard region.length >= total else {
            throw QEMUError("the source serves \(region.length >> 20) MiB but QEMU here has \(total >> 20) MiB of guest RAM: give both the same size")
        }
        let resolver = try FaultResolver(uffd: handoff.uffd, region: region, mappings: handoff.mappings,
                                         demand: client.demand, push: client.push, logger: logger)
        // The source holds pages until its VM stops; until then only silence can come.
        resolver.stallTimeoutMilliseconds = 120_000
        // A guest's vCPU threads keep their CPUs busy: a push that only uses idle CPU could
        // starve for the whole run. Compete fairly instead, as QEMU's own migration thread does.
        resolver.backgroundPush = false
        resolver.workloadConnection = handoff.connection
        let outcome = Mutex<Result<ResolveReport, ResolveError>?>(nil)
        let resolving = try KernelThread(name: "dst-resolver") {
            let r: Result<ResolveReport, ResolveError>
            do throws(ResolveError) { r = .success(try resolver.run()) } catch { r = .failure(error) }
            outcome.withLock { $0 = r }
        }
        defer {
            // On an error below: closing the connections makes the resolver poison what is
            // missing (the guest gets SIGBUS there, never zeros) and return.
            client.close()
            clientOpen = false
            resolving.join()
        }
        var runningAt: UInt64?
        while runningAt == nil {
            if let failure = outcome.withLock({ $0 }), case .failure(let e) = failure { throw QEMUError("paging guest RAM failed: \(e)") }
            if try qmp.waitForEvent(["RESUME"], timeoutMilliseconds: 20) != nil { runningAt = monotonicNanoseconds(); break }
            let status = try qmp.migrationStatus()
            if status == "failed" || status == "cancelled" { throw QEMUError("the incoming migration \(status)") }
            if status == "completed" {
                if case .bool(true)? = try qmp.execute("query-status")["running"] { runningAt = monotonicNanoseconds() }
                else { try qmp.execute("cont") }
            }
        }
        logger.info("guest running here after \(Double(runningAt! - started) / 1e6) ms; its RAM arrives on demand and in the background")
        resolving.join()
        guard let result = outcome.withLock({ $0 }) else { throw QEMUError("the resolver ended without a result") }
        switch result {
        case .failure(let e): throw QEMUError("paging guest RAM failed: \(e)")
        case .success(let r):
            let now = monotonicNanoseconds()
            return Report(untilRunningSeconds: Double(runningAt! - started) / 1e9,
                          untilLocalSeconds: Double(now - started) / 1e9, resolve: r, allLocalAt: now)
        }
    }
}
