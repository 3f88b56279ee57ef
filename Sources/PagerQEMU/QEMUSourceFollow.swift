import Logging
import PagerCore
import PagerKernel
import PagerSource
import PagerTrust
import Synchronization

/// The source side when something else drives the migration (libvirt's `virsh migrate`, or
/// any manager issuing `migrate` on its own monitor): serves the guest's RAM file, learning
/// the migration's phases from this QEMU's QMP socket, and keeps the source from ever running
/// again once the destination may run.
///
/// The phases: pages are held while the guest runs (whoever issues `migrate`); they flow
/// from the moment QEMU stops the VM to complete the migration (run state `finish-migrate`:
/// its RAM is final); once QEMU reports the migration completed the destination's guest may
/// run, so the source's RAM is fenced (the preload library write-protects it for good, see
/// ``SourcePreload``) and a resumed source QEMU is killed. A migration that fails after the
/// stop ends the serving: QEMU resumes the source itself, the destination's guest never ran.
public struct QEMUSourceFollower {
    public var qmpPath: String
    public var ram: String
    public var listen: Endpoint
    /// The source QEMU's PAGER_TRACK_SOCKET (the preload library), for the fence.
    public var preloadSocket: String
    public var authentication: PeerAuthentication
    public var requireEncryption = false
    /// Serve the guest RAM file by one-sided READ too (`--rdma`): starts the RDMA read service
    /// on the server before it accepts a session; returns what stops it.
    public var startReads: ((SourceServer) throws -> () -> Void)?
    /// Remove the RAM file once the destination holds every page and this QEMU is gone (a
    /// stale copy of guest memory on this host, and a later migration back here needs the
    /// name free).
    public var removeRAMWhenDone = true
    public var logger: Logger
    /// Set (from a signal handler) to stop: before the switch the daemon ends with nothing
    /// served and `x-ignore-shared` cleared; after it the serving ends with the destination's
    /// missing pages (it poisons them).
    public let stopRequested = StopRequest()

    public init(qmpPath: String, ram: String, listen: Endpoint, preloadSocket: String, authentication: PeerAuthentication, logger: Logger) {
        self.qmpPath = qmpPath
        self.ram = ram
        self.listen = listen
        self.preloadSocket = preloadSocket
        self.authentication = authentication
        self.logger = logger
    }

    /// Waits for the migration, serves the RAM until the destination holds every page.
    public func run(serverReady: (SourceServer) -> Void = { _ in }) throws -> QEMUSource.Report {
        let qmp = try QMP(path: qmpPath)
        try checkGuestRAM(qmp, ram: ram)
        guard case .bool(true)? = try qmp.execute("query-status")["running"] else {
            throw QEMUError("the source VM is not running (\(describe(try qmp.execute("query-status")["status"] ?? .null))): start pagerd qemu-source --follow while it runs, before the migration")
        }
        // A guest that arrived here with the pager and is still paging in would be served
        // with holes for the pages not yet here.
        try SourcePreload.requireWholeRAM(socket: preloadSocket, qemu: qmp.pid)
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
        // x-ignore-shared only while a destination pager waits, and not left behind: with it
        // a `virsh save` or snapshot of this QEMU would write no guest RAM.
        var ignoringShared = false
        defer { if ignoringShared { try? setIgnoreShared(qmp, false) } }
        serverReady(server)
        logger.info("waiting for a destination pagerd, then for the migration (virsh migrate); pages are held until QEMU stops the VM to complete it")
        let (started, stoppedAt) = try waitForTheStop(qmp, server: server, ignoringShared: &ignoringShared)
        try region.refreshExtents() // the guest wrote its RAM until now
        server.release()
        logger.info("serving the source VM's RAM from \(Double(monotonicNanoseconds() - stoppedAt) / 1e6) ms after it stopped")
        let completedAt = try waitForCompletion(qmp)
        logger.info("device state migrated \(Double(completedAt - started) / 1e6) ms after the migration began; the destination may run from now on")
        // From here QMP belongs to the watch; the QEMU is done with the capability.
        ignoringShared = false
        let watch = try guardAgainstResume(qmp)
        defer { watch.stop() }
        guard server.waitUntilSessionsEnded(firstWithinNanoseconds: 60_000_000_000) else {
            throw QEMUError("no destination pagerd connected within 60 s of the switch: the destination guest cannot get its RAM")
        }
        if removeRAMWhenDone {
            watch.waitUntilQEMUGone(timeoutMilliseconds: 30_000)
            removeFile(ram)
            logger.info("the destination holds every page: removed \(ram) (this host's stale copy of the guest's memory)")
        }
        return QEMUSource.Report(deviceStateSeconds: Double(completedAt - started) / 1e9, untilStopSeconds: Double(stoppedAt - started) / 1e9,
                                 counts: server.counts, migrateIssuedAt: started)
    }

    /// Sets or clears `x-ignore-shared` (guest RAM out of QEMU's stream: the pager serves it).
    /// libvirt sets only the capabilities it manages when it migrates, and this is not one.
    /// Migration statuses that QEMU reaches only once its `vm_stop` has returned: the vCPUs
    /// paused and block I/O drained (the `finish-migrate` run state and the STOP event come
    /// before the drain, while a disk read may still land in guest RAM). libvirt always turns
    /// on `pause-before-switchover`, so its migrations pass `pre-switchover` and `device`;
    /// without it QEMU goes from `active` to `completed`.
    static let stoppedForGood: Set<String> = ["pre-switchover", "device", "completed"]

    private func setIgnoreShared(_ qmp: QMP, _ on: Bool) throws {
        try qmp.execute("migrate-set-capabilities", "{\"capabilities\":[{\"capability\":\"x-ignore-shared\",\"state\":\(on)}]}")
    }

    private func ignoresShared(_ qmp: QMP) throws -> Bool {
        guard case .array(let caps) = try qmp.execute("query-migrate-capabilities") else { return false }
        return caps.contains { $0["capability"] == .string("x-ignore-shared") && $0["state"] == .bool(true) }
    }

    /// Sets `x-ignore-shared` once a destination pagerd has a session (it connects when its
    /// QEMU starts, before libvirt issues `migrate` here), then waits until the migration has
    /// stopped the VM for good (``stoppedForGood``). A pause for any other reason (`virsh
    /// suspend`) releases nothing.
    /// Returns when the migration was first seen and when the VM had stopped.
    private func waitForTheStop(_ qmp: QMP, server: SourceServer, ignoringShared: inout Bool) throws -> (started: UInt64, stopped: UInt64) {
        var started: UInt64?
        while true {
            _ = try qmp.waitForEvent(["STOP", "MIGRATION"], timeoutMilliseconds: 5)
            if stopRequested.isRequested {
                throw QEMUError("stopped by a signal \(started == nil ? "before the migration" : "during the migration, before the switch"): the pager served nothing\(ignoringShared ? "; x-ignore-shared cleared (a migration now would send the RAM in QEMU's stream)" : "")")
            }
            if !ignoringShared && server.activeSessions > 0 && started == nil {
                try setIgnoreShared(qmp, true)
                ignoringShared = true
                logger.info("a destination pagerd has a session: x-ignore-shared set (QEMU will leave the guest RAM to the pager)")
            }
            guard case .string(let status)? = try qmp.execute("query-migrate")["status"] else { continue }
            if started == nil, ["setup", "active", "pre-switchover", "device"].contains(status) {
                started = monotonicNanoseconds()
                guard ignoringShared, try ignoresShared(qmp) else {
                    throw QEMUError("a migration of this QEMU began with no destination pagerd connected (x-ignore-shared not set): QEMU sends the guest RAM itself; the pager serves nothing")
                }
                logger.info("a migration of this QEMU began (status \(status)); its RAM is skipped by QEMU (x-ignore-shared)")
            }
            if started != nil, status == "failed" || status == "cancelled" {
                let why = (try? qmp.execute("query-migrate")["error-desc"]).flatMap { $0 }.map(describe) ?? "no reason given"
                throw QEMUError("the migration \(status) before the switch (\(why)): the source VM runs on here, the pager served nothing")
            }
            guard let began = started, Self.stoppedForGood.contains(status) else { continue }
            let state = try qmp.execute("query-status")["status"]
            guard state == .string("finish-migrate") || state == .string("postmigrate") else {
                throw QEMUError("QEMU reports the migration at \(status) but the VM \(describe(state ?? .null)): refusing to serve its RAM")
            }
            guard try ignoresShared(qmp) else {
                throw QEMUError("the migration runs with x-ignore-shared off (something reset it): QEMU sends the guest RAM itself; the pager serves nothing")
            }
            logger.info("source VM stopped for the switch")
            return (began, monotonicNanoseconds())
        }
    }
    /// Waits for QEMU's migration to complete; a failure after the stop ends the serving.
    private func waitForCompletion(_ qmp: QMP) throws -> UInt64 {
        while true {
            if stopRequested.isRequested { throw QEMUError("stopped by a signal while the device state migrated") }
            let status = try qmp.migrationStatus()
            if status == "completed" { return monotonicNanoseconds() }
            if status == "failed" || status == "cancelled" {
                let why = (try? qmp.execute("query-migrate")["error-desc"]).flatMap { $0 }.map(describe) ?? "no reason given"
                throw QEMUError("QEMU's migration \(status) after the VM stopped (\(why)): the source VM runs on here; the pages served meanwhile are void (the destination's guest never ran)")
            }
            sleepMilliseconds(1)
        }
    }

    /// The destination may run now: watches for a resume of the source QEMU (killing it),
    /// then fences its RAM (the watch first: the fence may take seconds to answer).
    private func guardAgainstResume(_ qmp: QMP) throws -> ResumeGuard {
        qmp.discardEvents() // a RESUME of hours ago (virsh suspend, resume) is not one now
        let pid = qmp.pid
        let qemu = ProcessHandle(pid) // before the fence: QEMU may be destroyed meanwhile
        let watch = try ResumeGuard(qmp: qmp, logger: logger)
        do {
            let bytes = try SourcePreload.fenceGuestRAM(socket: preloadSocket, qemu: pid)
            logger.info("source RAM fenced (\(bytes >> 20) MiB write-protected for good): this QEMU cannot run its guest again")
        } catch {
            // A manager (libvirt) destroys the source once the migration completed, maybe
            // while the fence is asked for: then nothing is left that could run the guest.
            if qemu.waitForExit(timeoutMilliseconds: 3000) {
                logger.info("the source QEMU (process \(pid)) exited before its RAM was fenced (its manager destroyed it): it cannot run its guest again")
            } else {
                logger.error("the fence failed (\(error)): only the watch on QMP, while this daemon runs, keeps this QEMU from running its guest again")
            }
        }
        return watch
    }
}

/// Watches a released source QEMU on QMP: if it runs again (`cont` by an operator, or a
/// manager resuming it after a failed finish) it is killed at once, loudly.
final class ResumeGuard: @unchecked Sendable {
    private let qmp: QMP
    private let logger: Logger
    private let stopping = Atomic<Bool>(false)
    private let gone = WaitableState(false)
    private var thread: KernelThread?

    init(qmp: QMP, logger: Logger) throws {
        self.qmp = qmp
        self.logger = logger
        thread = try KernelThread(name: "src-resume-guard") { [self] in watch() }
    }

    private func watch() {
        defer { gone.change { $0 = true } }
        do {
            while !stopping.load(ordering: .acquiring) {
                let resumed = try qmp.waitForEvent(["RESUME"], timeoutMilliseconds: 50) != nil
                let running = try resumed || qmp.execute("query-status")["running"] == .bool(true)
                if running {
                    logger.critical("the source VM was resumed after its RAM went to the destination: killing QEMU (process \(qmp.pid)) so that the guest never runs twice")
                    try? sendSignal(9, to: qmp.pid)
                    return
                }
            }
        } catch {
            // QMP closed: QEMU is gone (the manager destroyed it after the migration). Said,
            // in case it was something else.
            logger.info("the watch on the source QEMU ended: \(error)")
        }
    }

    /// Waits until QEMU has gone (or `timeoutMilliseconds`).
    func waitUntilQEMUGone(timeoutMilliseconds: Int) {
        _ = gone.wait(until: { $0 }, deadline: monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000)
    }

    func stop() {
        stopping.store(true, ordering: .releasing)
        thread?.join()
        thread = nil
    }
}

/// A request to stop, made from a signal handler and checked by the daemon's loops.
public final class StopRequest: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public func request() { flag.store(true, ordering: .releasing) }
    public var isRequested: Bool { flag.load(ordering: .acquiring) }
}
