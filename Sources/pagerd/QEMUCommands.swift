import ArgumentParser
import Logging
import PagerKernel
import PagerOperations
import PagerQEMU
import PagerReport
import PagerSource
import PagerTrust
import Synchronization

struct QEMUSourceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qemu-source",
        abstract: "Migrate a running QEMU's device state and serve its guest RAM to pagerd qemu-dest.",
        discussion: """
        QEMU must give the guest RAM as a named shared file:
          -object memory-backend-file,id=ram0,size=SIZE,mem-path=/dev/shm/NAME,share=on -machine memory-backend=ram0
        and a QMP socket (-qmp unix:SOCK,server=on,wait=off). This command sets x-ignore-shared, \
        starts the migration to --migrate-to (device state only), serves --ram to the \
        destination's pagerd, but not one page before QEMU has stopped the VM, and exits once \
        the destination holds every page. Start pagerd qemu-dest and the destination QEMU first.

        Pre-copy (optional): start the source QEMU with the preload library and
          LD_PRELOAD=libpager-preload.so PAGER_RAM_PATH=RAM PAGER_TRACK_SOCKET=SOCK
        and give --track-socket SOCK here (and --precopy to pagerd qemu-dest). Guest RAM is then \
        sent in rounds while the guest runs (each round the pages it wrote meanwhile, found \
        with userfaultfd write-protect and PAGEMAP_SCAN) until the rules below say switch, or \
        SIGUSR1 forces it. The switch issues migrate: QEMU stops the VM, the destination drops \
        the pages written since the last round and fetches them on demand.

        Following libvirt (--follow instead of --migrate-to): libvirt's virsh migrate drives \
        the migration and this command follows it on the QMP socket: it sets x-ignore-shared, \
        serves --ram from the moment QEMU stops the VM to complete the migration, and once the \
        migration has completed fences the source's RAM (the preload library in the source \
        QEMU, on --track-socket, write-protects it for good) and kills this QEMU if anything \
        resumes it: a source whose destination may run never runs again. It removes --ram once \
        the destination holds every page and QEMU is gone.
        """
    )
    @Option(help: "The source QEMU's QMP socket.") var qmp: String
    @Option(help: "The guest RAM file (mem-path of the memory backend).") var ram: String
    @Option(help: "Address and port to serve pages on, e.g. 0.0.0.0:7070.") var listen: String
    @Option(help: "The destination QEMU's incoming URI, e.g. tcp:DEST:4444 (this command drives the migration).") var migrateTo: String?
    @Flag(help: "libvirt (or another manager) drives the migration; follow it on QMP. Needs --track-socket for the fence.") var follow = false
    @Option(help: "The source QEMU's PAGER_TRACK_SOCKET: pre-copy rounds of guest RAM before the switch; with --follow, the fence.") var trackSocket: String?
    @OptionGroup var convergence: ConvergenceOptions
    @Flag(help: "Serve the guest RAM by one-sided RDMA READ too, to a pagerd qemu-dest --transport rdma (an RDMA CM listener on the --listen address and port number; needs keys, an RDMA device, and pagerd built with the RDMA trait; not with pre-copy).")
    var rdma = false
    @OptionGroup var keys: AuthenticationOptions
    @OptionGroup var operations: OperationsOptions
    @Option(help: "Log level: trace, debug, info, warning, error.") var logLevel: String = "info"

    func validate() throws {
        guard Endpoint(listen) != nil else { throw ValidationError("--listen must be ADDR:PORT (IPv4), got \(listen)") }
        try validateRDMA(rdma, "--rdma", keys: keys, precopy: !follow && trackSocket != nil)
        guard follow != (migrateTo != nil) else {
            throw ValidationError("give --migrate-to (this command drives the migration) or --follow (libvirt drives it), one of them")
        }
        if follow && trackSocket == nil {
            throw ValidationError("--follow needs --track-socket, the source QEMU's PAGER_TRACK_SOCKET: the fence that keeps a released source from running again")
        }
    }

    func run() throws {
        let logger = makeLogger("pagerd.qemu-source", logLevel)
        let authentication = try keys.resolve(insecureMeans: nil)
        raiseOpenFiles(logger)
        let interfaces = Mutex<OperatorInterfaces?>(nil)
        defer { interfaces.withLock { $0 }?.finish() }
        do {
            let precopy = follow ? nil : trackSocket.map { QEMUSource.Precopy(trackSocket: $0, policy: convergence.policy) }
            let servers = Mutex<SourceServer?>(nil)
            if precopy != nil {
                try TerminationSignals.start(also: [TerminationSignals.userSignal1]) { signal in
                    if signal == TerminationSignals.userSignal1 {
                        logger.info("SIGUSR1: switching to post-copy at the end of the current round")
                        servers.withLock { $0 }?.regions.first?.live?.forceSwitch()
                    } else {
                        logger.info("signal \(signal): stopping; the source VM keeps running if it has not stopped yet")
                        serviceNotifier.stopping(status: "stopping on signal \(signal)")
                        servers.withLock { $0 }?.stop()
                    }
                }
            }
            let ready = { (server: SourceServer) in
                    servers.withLock { $0 = server }
                    let status = SourceStatus(role: "qemu-source", server: server, regions: server.regions)
                    do {
                        let started = try operations.start(role: "qemu-source", document: { status.document(version: pagerdVersion) },
                                                           metrics: { status.metrics(version: pagerdVersion) }, logger: logger)
                        interfaces.withLock { $0 = started }
                    } catch {
                        logger.error("the status socket or metrics endpoint could not start: \(error)")
                    }
                    let serving = "serving \(ram) on \(listen)\(precopy == nil ? " (held until the VM stops)" : " (pre-copy rounds while the guest runs)")"
                    logger.info("\(serving)")
                    serviceNotifier.ready(status: serving)
                }
            let r: QEMUSource.Report
            if let migrateTo {
                var qemuSource = QEMUSource(qmpPath: qmp, ram: ram, listen: Endpoint(listen)!, migrateTo: migrateTo,
                                            authentication: authentication, logger: logger, precopy: precopy)
                qemuSource.requireEncryption = keys.encrypt
                if rdma { qemuSource.startReads = { server in try startReadService(server, logger: logger) } }
                r = try qemuSource.run(serverReady: ready)
            } else {
                var follower = QEMUSourceFollower(qmpPath: qmp, ram: ram, listen: Endpoint(listen)!, preloadSocket: trackSocket!,
                                                  authentication: authentication, logger: logger)
                follower.requireEncryption = keys.encrypt
                if rdma { follower.startReads = { server in try startReadService(server, logger: logger) } }
                let stop = follower.stopRequested
                try TerminationSignals.start { signal in
                    logger.info("signal \(signal): stopping (before the switch nothing has been served; after it the destination loses its source)")
                    serviceNotifier.stopping(status: "stopping on signal \(signal)")
                    stop.request()
                    servers.withLock { $0 }?.stop()
                }
                r = try follower.run(serverReady: ready)
            }
            serviceNotifier.status("migrated: the destination holds every page (\(r.counts.bytesSent >> 20) MiB sent as bytes)")
            if let outcome = r.precopy { printPrecopy(outcome, daemon: "pagerd qemu-source", paused: "guest") }
            print("""
            pagerd qemu-source: device state migrated in \(String(format: 1, r.deviceStateSeconds * 1000)) ms (VM stopped after \(String(format: 1, r.untilStopSeconds * 1000)) ms)
              served            \(r.counts.demandRequests) demand and \(r.counts.prefetchRequests) prefetch requests, \(r.counts.bytesSent >> 20) MiB as bytes, \(rdma ? "\(r.counts.pushReadBytes >> 20) MiB left to RDMA READs, " : "")\(r.counts.zeroBytes >> 20) MiB as zero ranges
              connections       \(r.counts.resumes) connection(s) resumed, \(r.counts.lingerExpired) session(s) not resumed in time
              migrate-issued-ns=\(r.migrateIssuedAt)\(r.precopyStartedAt.map { "\n  precopy-started-ns=\($0)" } ?? "")
            """)
        } catch {
            serviceNotifier.status("FAILED: \(error)")
            print("pagerd qemu-source: FAILED: \(error)")
            throw ExitCode(1)
        }
    }
}

struct QEMUDestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qemu-dest",
        abstract: "Receive a QEMU migration whose guest RAM arrives on demand from pagerd qemu-source.",
        discussion: """
        Start this first, then the destination QEMU with the same RAM file (empty), -incoming \
        defer, a QMP socket, and the preload library:
          LD_PRELOAD=libpager-preload.so PAGER_RAM_PATH=RAM PAGER_UFFD_SOCKET=SOCK qemu-system-x86_64 ...
        The library hands QEMU's RAM mapping to this daemon; prealloc=on, a private mapping or a \
        RAM file that already holds data make QEMU stop at once. This command then drives the \
        incoming migration, resolves the guest's faults from the source and pushes the rest, \
        and prints a report once every page is local. If it stops early (an error, SIGTERM), \
        every page not yet local is poisoned: the guest gets SIGBUS, never zeros.

        With --precopy (the source runs pagerd qemu-source --track-socket) it first receives \
        pre-copy rounds of guest RAM into its own memory while the guest still runs on the \
        source, and installs them locally after the switch.

        Following libvirt (--follow instead of --incoming): libvirt starts the destination \
        QEMU (virsh migrate), issues migrate-incoming and resumes the guest; this command only \
        sets x-ignore-shared on QMP and serves the guest's faults from the source (started by \
        pagerd qemu-source --follow).
        """
    )
    @Option(help: "The destination QEMU's QMP socket.") var qmp: String
    @Option(help: "The guest RAM file here (empty; QEMU creates it).") var ram: String
    @Option(help: "pagerd qemu-source's ADDR:PORT.") var connect: String
    @Option(help: "Unix socket the preload library hands QEMU's RAM to (mode 0660).") var uffdSocket: String
    @Option(help: "Group of the handoff and control sockets: QEMU's (kvm when libvirt runs QEMU as libvirt-qemu); default: this process's.")
    var socketGroup: String?
    @Option(help: "URI this QEMU receives the device state on, e.g. tcp:0:4444 (this command drives the incoming migration).") var incoming: String?
    @Flag(help: "libvirt (or another manager) drives the incoming migration; follow it.") var follow = false
    @Flag(help: "Receive pre-copy rounds first (the source runs pagerd qemu-source --track-socket).") var precopy = false
    @Option(help: "Fault threads: realtime (SCHED_FIFO 1: the guest's vCPUs keep the CPUs busy), normal, or auto (real-time when this process may use one CPU only).") var demandPriority = DemandPriority.realtime
    @Option(help: "How faults and the push fetch guest RAM: tcp, or rdma (one-sided RDMA READ from a pagerd qemu-source --rdma; needs keys, an RDMA device, and pagerd built with the RDMA trait; not with --precopy; what RDMA cannot bring still comes over TCP).")
    var transport = Transport.tcp
    @OptionGroup var device: RDMADeviceOption
    @OptionGroup var keys: AuthenticationOptions
    @OptionGroup var operations: OperationsOptions
    @Option(help: "Log level: trace, debug, info, warning, error.") var logLevel: String = "info"

    func validate() throws {
        guard Endpoint(connect) != nil else { throw ValidationError("--connect must be ADDR:PORT (IPv4), got \(connect)") }
        guard follow != (incoming != nil) else {
            throw ValidationError("give --incoming (this command drives the incoming migration) or --follow (libvirt drives it), one of them")
        }
        if follow && precopy { throw ValidationError("--precopy needs the source to drive the switch (pagerd qemu-source --migrate-to): not with --follow") }
        try validateRDMA(transport == .rdma, "--transport rdma", keys: keys, precopy: precopy)
        try device.validate(transport: transport)
    }

    func run() throws {
        let logger = makeLogger("pagerd.qemu-dest", logLevel)
        let authentication = try keys.resolve(insecureMeans: InsecureConsequence.destination)
        let book = DestinationBook(role: "qemu-dest", source: connect)
        let tracked = Tracked(book)
        let interfaces = try operations.start(role: "qemu-dest", socketGroup: socketGroup, document: { book.document(version: pagerdVersion) },
                                              metrics: { book.metrics(version: pagerdVersion) }, logger: logger)
        defer { interfaces.finish() }
        do {
            // A crash or fatal signal after QEMU's handoff poisons the guest RAM not yet local.
            try PoisonGuard.installFatalSignalHandlers()
            try startGuardian(logger)
            // SIGTERM/SIGINT stop the migration: missing pages are poisoned (the guest gets
            // SIGBUS, loudly) rather than left to become zeros when this process is gone.
            let cancel = Mutex<(@Sendable () -> Void)?>(nil)
            try TerminationSignals.start { signal in
                guard let stop = cancel.withLock({ $0 }) else {
                    // QEMU has not handed over its RAM: there is nothing to poison.
                    print("pagerd qemu-dest: FAILED: signal \(signal) before QEMU handed over its guest RAM")
                    fflushStandardOutput()
                    exitProcess(1)
                }
                logger.warning("signal \(signal): stopping; guest pages not yet local are poisoned")
                serviceNotifier.stopping(status: "stopping on signal \(signal); guest pages not yet local are poisoned")
                stop()
            }
            var destination = QEMUDestination(qmpPath: qmp, ram: ram, source: Endpoint(connect)!, uffdSocket: uffdSocket, incoming: incoming,
                                              authentication: authentication, logger: logger, precopy: precopy)
            destination.demandPriority = demandPriority
            destination.encrypt = keys.encrypt
            destination.progress = tracked.progress
            destination.socketGroup = socketGroup
            destination.onSession = { session, region in book.identify(tracked.id, session: session, region: region) }
            if transport == .rdma { destination.rdmaReads = { [device] client in connectReads(client, device: device.rdmaDevice, logger: logger) } }
            let r = try destination.run(listening: {
                print("pagerd qemu-dest: waiting for QEMU's handoff on \(uffdSocket)")
                fflushStandardOutput()
                serviceNotifier.ready(status: "waiting for QEMU's handoff on \(uffdSocket); source \(connect)")
            },
                     onCancel: { stop in cancel.withLock { $0 = stop } })
            book.finish(tracked.id, error: nil)
            serviceNotifier.status("guest RAM all local after \(String(format: 1, r.untilLocalSeconds)) s")
            let latency = LatencySummary(samples: r.resolve.faultLatencies)
            if let staged = r.staged {
                print("pagerd qemu-dest: pre-copy staged \(staged.bytes >> 20) MiB in \(String(format: 2, staged.seconds)) s; \(staged.invalidatedBytes >> 10) KiB written by the guest after its round were dropped and fetched again")
            }
            print("""
            pagerd qemu-dest: guest running here \(String(format: 1, r.untilRunningSeconds * 1000)) ms after \(follow ? "QEMU's handoff" : "migrate-incoming"); all RAM local after \(String(format: 1, r.untilLocalSeconds)) s
              faults            \(r.resolve.faults), fault to install: p50 \(formatMicros(latency.p50)) p99 \(formatMicros(latency.p99)) max \(formatMicros(latency.max))
              pages             \(r.resolve.installedPages) installed with data, \(r.resolve.zeroPages) zero, \(r.resolve.bytesReceived >> 20) MiB received\(transport == .rdma ? "; \(r.resolve.reads) RDMA READs brought \(r.resolve.readBytes >> 10) KiB, the push's \(r.resolve.pushReads) READs \(r.resolve.pushReadBytes >> 10) KiB, \(r.resolve.readsAskedAgain) requests asked again over TCP" : "")
              all-local-ns=\(r.allLocalAt)
            """)
        } catch {
            book.finish(tracked.id, error: "\(error)")
            serviceNotifier.status("FAILED: \(error)")
            print("pagerd qemu-dest: FAILED: \(error)")
            throw ExitCode(1)
        }
    }
}
