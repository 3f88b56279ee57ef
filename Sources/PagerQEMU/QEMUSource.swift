import Logging
import PagerCore
import PagerDestination
import PagerKernel
import PagerSource
import PagerTrust
import PagerWire
import Synchronization
import SystemPackage

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
///
/// With ``precopy`` the guest's RAM is sent in pre-copy rounds while the guest still runs
/// (the source QEMU's preload library hands over a write-protect userfaultfd on its RAM
/// mapping, see ``Precopy``); the switch then issues `migrate`, which stops the VM, and only
/// the pages written since the last round are fetched after it.
public struct QEMUSource {
    public var qmpPath: String
    public var ram: String
    public var listen: Endpoint
    /// Where the destination QEMU listens (`migrate` URI), e.g. tcp:198.18.0.2:4444.
    public var migrateTo: String
    public var logger: Logger
    public var precopy: Precopy?
    /// Whom the guest RAM is served to (see ``SourceServer/authentication``).
    public var authentication: PeerAuthentication
    /// Refuse destinations that do not ask for encryption (see ``SourceServer/requireEncryption``).
    public var requireEncryption = false
    /// Serve the guest RAM file by one-sided READ too (`--rdma`): starts the RDMA read service
    /// on the server before it accepts a session; returns what stops it.
    public var startReads: ((SourceServer) throws -> () -> Void)?

    /// Pre-copy rounds of guest RAM before the switch.
    public struct Precopy: Sendable {
        /// The source QEMU's PAGER_TRACK_SOCKET (QEMU runs with the preload library).
        public var trackSocket: String
        public var policy: ConvergencePolicy
        public init(trackSocket: String, policy: ConvergencePolicy) {
            self.trackSocket = trackSocket
            self.policy = policy
        }
    }

    public init(qmpPath: String, ram: String, listen: Endpoint, migrateTo: String, authentication: PeerAuthentication,
                logger: Logger, precopy: Precopy? = nil) {
        self.authentication = authentication
        self.qmpPath = qmpPath
        self.ram = ram
        self.listen = listen
        self.migrateTo = migrateTo
        self.logger = logger
        self.precopy = precopy
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
        /// What the pre-copy rounds did (with ``QEMUSource/precopy``).
        public var precopy: LiveRegion.Outcome?
        /// `monotonicNanoseconds()` when the first pre-copy round began (with pre-copy).
        public var precopyStartedAt: UInt64?
    }

    /// Runs the migration and serves pages until the destination holds them all.
    public func run(serverReady: (SourceServer) -> Void = { _ in }) throws -> Report {
        let qmp = try QMP(path: qmpPath)
        try checkGuestRAM(qmp, ram: ram)
        try qmp.execute("migrate-set-capabilities", #"{"capabilities":[{"capability":"x-ignore-shared","state":true}]}"#)
        if let precopy { return try runPrecopy(qmp, precopy, serverReady: serverReady) }
        let region = try ServedRegion(id: 1, path: ram)
        let server = try SourceServer(listen: listen, regions: [region], authentication: authentication, logger: logger)
        server.requireEncryption = requireEncryption
        server.hold() // not one page before the VM stops
        let stopReads = try startReads?(server)
        let serving = try KernelThread(name: "src-accept") { server.run() }
        defer {
            server.stop()
            serving.join()
            stopReads?()
        }
        serverReady(server)
        let started = monotonicNanoseconds()
        logger.info("migrating device state to \(migrateTo) (guest RAM is skipped: x-ignore-shared); pages are held until the VM stops")
        do { try stopByMigrating(qmp, to: migrateTo, logger: logger) } catch {
            throw QEMUError("\(error); the source VM's RAM was never served")
        }
        // The VM has stopped: its RAM is final from now on.
        let stoppedAt = monotonicNanoseconds()
        try region.refreshExtents() // the guest wrote its RAM until now
        server.release()
        logger.info("serving the source VM's RAM from \(Double(monotonicNanoseconds() - stoppedAt) / 1e6) ms after it stopped")
        let completedAt = try waitUntilCompleted(qmp)
        logger.info("device state migrated in \(Double(completedAt - started) / 1e6) ms; serving pages until the destination has all")
        try serveUntilDone(server)
        return Report(deviceStateSeconds: Double(completedAt - started) / 1e9, untilStopSeconds: Double(stoppedAt - started) / 1e9,
                      counts: server.counts, migrateIssuedAt: started)
    }

    /// Waits until QEMU reports the migration (device state, after the VM stopped) completed.
    private func waitUntilCompleted(_ qmp: QMP) throws -> UInt64 {
        while true {
            let status = try qmp.migrationStatus()
            if status == "completed" { return monotonicNanoseconds() }
            if status == "failed" || status == "cancelled" {
                throw QEMUError("QEMU's migration \(status) after the VM stopped; the destination may hold pages but no device state")
            }
            sleepMilliseconds(1)
        }
    }

    /// Serves until the destination has every page and has gone; a destination that never
    /// connects within a minute is an error (its guest would hang).
    private func serveUntilDone(_ server: SourceServer) throws {
        guard server.waitUntilSessionsEnded(firstWithinNanoseconds: 60_000_000_000) else {
            throw QEMUError("no destination pagerd connected within 60 s of the switch: the destination guest cannot get its RAM")
        }
    }

    /// Pre-copy: rounds while the guest runs, then `migrate` stops it (the switch).
    private func runPrecopy(_ qmp: QMP, _ precopy: Precopy, serverReady: (SourceServer) -> Void) throws -> Report {
        let connection: FileDescriptor
        do { connection = try SourcePreload.connect(precopy.trackSocket, request: SourcePreload.tracking, qemu: qmp.pid) } catch let error as QEMUError {
            throw error
        } catch {
            throw QEMUError("nothing offers write tracking on \(precopy.trackSocket) (\(error)): start the source QEMU with LD_PRELOAD=libpager-preload.so PAGER_RAM_PATH=\(ram) PAGER_TRACK_SOCKET=\(precopy.trackSocket), or migrate without --track-socket")
        }
        defer { try? connection.close() }
        let handoff: Handoff
        do { handoff = try HandoffListener.read(from: connection) } catch {
            throw QEMUError("the source QEMU's preload library (PAGER_TRACK_SOCKET=\(precopy.trackSocket)) gave no write tracking: \(error)")
        }
        guard handoff.mappings.count == 1, let m = handoff.mappings.first, m.regionOffset == 0 else {
            throw QEMUError("\(precopy.trackSocket) is not the tracking socket of the QEMU behind \(qmpPath) (or describes more than the one RAM mapping)")
        }
        let tracker = try WriteTracker(handedOver: handoff.uffd, pid: qmp.pid, range: m.range)
        // The pause runs on the push thread at the switch; the main thread leaves QMP alone
        // until it is done (stopped or failed).
        let phase = WaitableState(SwitchPhase.rounds)
        let shared = SharedQMP(qmp)
        let migrateTo = migrateTo, logger = logger
        let live = LiveRegion(tracker: tracker, policy: precopy.policy) {
            let issued = monotonicNanoseconds()
            phase.change { $0 = .pausing }
            do {
                try stopByMigrating(shared.qmp, to: migrateTo, logger: logger)
                let stoppedAt = monotonicNanoseconds()
                phase.change { $0 = .stopped(migrateIssued: issued, at: stoppedAt) }
            } catch {
                logger.error("the switch failed, the source VM keeps running: \(error)")
                phase.change { $0 = .pauseFailed }
                throw error
            }
        }
        let region = ServedRegion(id: 1, name: ram, pid: qmp.pid, address: m.base, length: Int(m.size), pageSize: m.pageSize, live: live)
        let server = try SourceServer(listen: listen, regions: [region], authentication: authentication, logger: logger)
        server.requireEncryption = requireEncryption
        // The guest's vCPUs keep running during the rounds: compete with them fairly, as
        // QEMU's own migration thread does, or the rounds starve.
        server.backgroundPush = false
        let serving = try KernelThread(name: "src-accept") { server.run() }
        defer {
            server.stop()
            serving.join()
        }
        serverReady(server)
        logger.info("pre-copy: \(m.size >> 20) MiB of guest RAM write-tracked; rounds start when the destination connects, the switch issues migrate")
        let precopyStarted = monotonicNanoseconds()
        let connectDeadline = precopyStarted + 60_000_000_000
        var outcome = phase.withLock { $0 }
        while !outcome.isSettled {
            if server.counts.sessions == 0 && monotonicNanoseconds() > connectDeadline {
                throw QEMUError("no destination pagerd connected within 60 s: nothing was migrated, the source VM keeps running")
            }
            if case .rounds = outcome, server.counts.sessions > 0 && server.activeSessions == 0 {
                throw QEMUError("the destination's session ended before the switch (see the log above): the source VM keeps running")
            }
            // Wakes at once when the switch settles; the session checks above run every 50 ms.
            _ = phase.wait(until: { $0.isSettled }, deadline: monotonicNanoseconds() + 50_000_000)
            outcome = phase.withLock { $0 }
        }
        guard case .stopped(let started, let stoppedAt) = outcome else {
            throw QEMUError("the switch to post-copy failed (see the log above): the source VM keeps running")
        }
        let completedAt = try waitUntilCompleted(qmp)
        logger.info("device state migrated in \(Double(completedAt - started) / 1e6) ms; serving pages until the destination has all")
        try serveUntilDone(server)
        return Report(deviceStateSeconds: Double(completedAt - started) / 1e9, untilStopSeconds: Double(stoppedAt - started) / 1e9,
                      counts: server.counts, migrateIssuedAt: started, precopy: live.outcome, precopyStartedAt: precopyStarted)
    }
}

/// Where a pre-copy migration of QEMU is, as the push thread's pause moves it on.
private enum SwitchPhase {
    /// Pre-copy rounds run; the guest runs.
    case rounds
    /// `migrate` issued, waiting for QEMU to stop the VM.
    case pausing
    /// The VM stopped: its RAM is final.
    case stopped(migrateIssued: UInt64, at: UInt64)
    /// The pause failed: the source VM keeps running.
    case pauseFailed

    var isSettled: Bool {
        switch self {
        case .rounds, .pausing: false
        case .stopped, .pauseFailed: true
        }
    }
}

/// The QMP connection used by the pause on the push thread while the main thread waits.
private final class SharedQMP: @unchecked Sendable {
    let qmp: QMP
    init(_ qmp: QMP) { self.qmp = qmp }
}

/// Issues `migrate` (device state only) and returns once QEMU has stopped the VM for good
/// (``QEMUSourceFollower/stoppedForGood``): from then on the guest writes nothing. Retries a refused connection for 30 s (the destination QEMU may not listen yet;
/// the VM here has not stopped). Refuses a VM that QEMU still reports running.
func stopByMigrating(_ qmp: QMP, to uri: String, logger: Logger) throws {
    let started = monotonicNanoseconds()
    try qmp.execute("migrate", "{\"uri\":\"\(uri)\"}")
    while true {
        _ = try qmp.waitForEvent(["STOP"], timeoutMilliseconds: 1)
        let status = try qmp.migrationStatus()
        if status == "failed" || status == "cancelled" {
            let why = (try? qmp.execute("query-migrate")["error-desc"]).flatMap { $0 }.map(describe) ?? "no reason given"
            if why.contains("Connection refused") && monotonicNanoseconds() - started < 30_000_000_000 {
                sleepMilliseconds(100)
                try qmp.execute("migrate", "{\"uri\":\"\(uri)\"}")
                continue
            }
            throw QEMUError("QEMU's migration \(status) (\(why))")
        }
        // QEMU has paused the vCPUs and drained block I/O (its STOP event comes before the
        // drain, so the event alone is not the moment the RAM is final).
        if QEMUSourceFollower.stoppedForGood.contains(status) { break }
        if monotonicNanoseconds() - started > 60_000_000_000 { throw QEMUError("QEMU did not stop the VM within 60 s of migrate") }
    }
    guard case .bool(false)? = try qmp.execute("query-status")["running"] else {
        throw QEMUError("QEMU reports the migration stopped or completed but the source VM still runs: refusing to serve its RAM")
    }
    logger.info("source VM stopped \(Double(monotonicNanoseconds() - started) / 1e6) ms after migrate")
}
