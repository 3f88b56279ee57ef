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

struct SourceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "source",
        abstract: "Serve memory regions to destinations.",
        discussion: """
        Serves each --region file (a tmpfs file such as /dev/shm/vm.ram, a hugetlbfs file, or a \
        snapshot file) to any number of destinations. Demand requests are answered first, on \
        their own connection; every other page streams on a second connection; holes and \
        zero pages are sent as zero ranges, never as bytes. Stops on SIGTERM or SIGINT and \
        prints what it served.

        Live memory (pre-copy, then post-copy): with --live-socket the daemon first waits for \
        a workload to hand over a userfaultfd registered in write-protect mode with \
        UFFD_FEATURE_WP_ASYNC on its memory (same Firecracker-format message as the \
        destination's handoff). That memory is served as a live region: round 0 sends every \
        page, each next round the pages written meanwhile (PAGEMAP_SCAN on /proc/PID/pagemap), \
        until the dirty set fits --downtime-ms, stops shrinking, --max-rounds or \
        --precopy-deadline-s is hit, or SIGUSR1 forces it. Then the workload is stopped \
        (SIGSTOP), a last scan finds the pages written since, the destination drops those \
        (INVALIDATE) and fetches them on demand. The destination must run with --precopy.
        """
    )

    @Option(help: "Address and port to listen on, e.g. 0.0.0.0:7070.") var listen: String
    @Option(name: .customLong("region"), help: "A file to serve (repeatable); region ids are 1, 2, ... in order.")
    var regions: [String] = []
    @Option(help: "Unix socket on which one workload hands over its live memory (pre-copy); it becomes the last region.") var liveSocket: String?
    @OptionGroup var convergence: ConvergenceOptions
    @Flag(help: "Live memory without pre-copy: pause the workload at once and migrate it by post-copy only.") var noPrecopy = false
    @Flag(help: "Run the push at normal priority instead of on idle CPU only (for a live workload that keeps every CPU busy).") var normalPriorityPush = false
    @Option(help: "Demand threads: auto (real-time when this process may use one CPU only), realtime (SCHED_FIFO 1), normal.") var demandPriority = DemandPriority.auto
    @Option(help: "Close connections whose whole handshake has not arrived within this many seconds of their accept.") var handshakeTimeoutS = 10.0
    @Option(help: "At most this many connections in their handshake at once (8 per host); a new one evicts the oldest.") var maxHandshakes = 64
    @Option(help: "Keep a session whose connections were lost this many seconds for its destination to resume it.") var sessionLingerS = 60.0
    @OptionGroup var keys: AuthenticationOptions
    @Flag(help: "Serve one-sided RDMA READ to authenticated destinations that offer it (an RDMA CM listener on the --listen address and port number; needs keys, an RDMA device, and pagerd built with the RDMA trait).")
    var rdma = false
    @OptionGroup var operations: OperationsOptions
    @Flag(help: "At exit, print the summary as one JSON line (the status document, see pagerd status --json) instead of text.")
    var json = false
    @Option(help: "Log level: trace, debug, info, warning, error.") var logLevel: String = "info"

    func validate() throws {
        guard Endpoint(listen) != nil else { throw ValidationError("--listen must be ADDR:PORT (IPv4), got \(listen)") }
        // Live (pre-copy) regions are served over TCP beside READ-served files.
        try validateRDMA(rdma, "--rdma", keys: keys, precopy: false)
        guard !regions.isEmpty || liveSocket != nil else { throw ValidationError("give at least one --region FILE or a --live-socket") }
        guard handshakeTimeoutS > 0, handshakeTimeoutS <= 3600 else { throw ValidationError("--handshake-timeout-s must be more than 0 and at most 3600, got \(handshakeTimeoutS)") }
        guard maxHandshakes > 0 else { throw ValidationError("--max-handshakes must be at least 1, got \(maxHandshakes)") }
        guard sessionLingerS >= 0, sessionLingerS <= 86_400 else { throw ValidationError("--session-linger-s must be 0 to 86400, got \(sessionLingerS)") }
    }

    func run() throws {
        let logger = makeLogger("pagerd.source", logLevel)
        let authentication = try keys.resolve(insecureMeans: nil)
        raiseOpenFiles(logger)
        var served: [ServedRegion] = []
        for (i, path) in regions.enumerated() { served.append(try ServedRegion(id: UInt32(i + 1), path: path)) }
        var policy = convergence.policy
        policy.precopy = !noPrecopy
        let live = try liveSocket.map { path in
            try LiveWorkload.accept(on: path, regionID: UInt32(served.count + 1), policy: policy, logger: logger)
        }
        if let live { served.append(live.region) }
        let server = try SourceServer(listen: Endpoint(listen)!, regions: served, authentication: authentication, logger: logger)
        server.handshakeTimeoutNanoseconds = UInt64(handshakeTimeoutS * 1e9)
        server.maxHandshakes = maxHandshakes
        server.sessionLingerNanoseconds = UInt64(sessionLingerS * 1e9)
        server.requireEncryption = keys.encrypt
        server.backgroundPush = !normalPriorityPush
        server.urgentDemand = demandPriority.isRealtime
        let stopReads = try rdma ? startReadService(server, logger: logger) : nil
        defer { stopReads?() }
        try TerminationSignals.start(also: [TerminationSignals.userSignal1]) { signal in
            if signal == TerminationSignals.userSignal1 {
                logger.info("SIGUSR1: switching to post-copy at the end of the current round")
                live?.region.live?.forceSwitch()
                return
            }
            logger.info("signal \(signal): stopping")
            serviceNotifier.stopping(status: "stopping on signal \(signal)")
            server.stop()
        }
        serviceNotifier.ready(status: "serving \(served.count) region(s) on \(server.listener.endpoint)")
        let status = SourceStatus(role: "source", server: server, regions: served)
        let interfaces = try operations.start(role: "source", document: { status.document(version: pagerdVersion) },
                                              metrics: { status.metrics(version: pagerdVersion) }, logger: logger)
        defer { interfaces.finish() }
        server.run()
        if json {
            print(String(decoding: JSONWriter.encode(status.document(version: pagerdVersion)), as: UTF8.self))
            return
        }
        if let outcome = live?.region.live?.outcome { printPrecopy(outcome, daemon: "pagerd source", paused: "workload") }
        let c = server.counts
        serviceNotifier.status("stopped: \(c.sessions) session(s), \(c.bytesSent >> 20) MiB sent as bytes, \(c.failedSessions) ended by errors")
        print("pagerd source: \(c.sessions) session(s), \(c.demandRequests) demand and \(c.prefetchRequests) prefetch requests, \(c.bytesSent >> 20) MiB sent as bytes, \(c.pushReadBytes >> 20) MiB left to RDMA READs, \(c.zeroBytes >> 20) MiB as zero ranges, \(c.failedSessions) session(s) ended by errors, \(c.authenticationFailures) connection(s) refused for failed authentication, \(c.resumes) connection(s) resumed (\(c.resentBytes >> 10) KiB sent again), \(c.lingerExpired) session(s) not resumed in time; \(c.handshakeSummary)")
    }
}

/// When pre-copy switches to post-copy (`pagerd source` and `pagerd qemu-source`).
struct ConvergenceOptions: ParsableArguments {
    @Option(help: "Pre-copy: at most this many rounds after round 0.") var maxRounds = 30
    @Option(help: "Pre-copy: switch once the dirty pages take at most this long to send at the measured rate.") var downtimeMs = 100
    @Option(help: "Pre-copy: switch when the dirty set has not shrunk by 10% for this many rounds.") var stallRounds = 3
    @Option(help: "Pre-copy: switch at the first round end after this many seconds.") var precopyDeadlineS: Double?

    var policy: ConvergencePolicy {
        var policy = ConvergencePolicy()
        policy.maxRounds = maxRounds
        policy.downtimeBudgetNanoseconds = UInt64(downtimeMs) * 1_000_000
        policy.stallRounds = stallRounds
        policy.deadlineNanoseconds = precopyDeadlineS.map { UInt64($0 * 1e9) }
        return policy
    }
}

/// Raises the open-file limit as far as it goes (one descriptor per connection: see
/// ``raiseOpenFileLimit()``); a source that cannot still serves, with the limit it has.
func raiseOpenFiles(_ logger: Logger) {
    do {
        let limit = try raiseOpenFileLimit()
        logger.debug("open files: at most \(limit.soft)")
    } catch {
        logger.warning("cannot raise the open-file limit: \(error)")
    }
}

/// The per-round lines both source daemons print after pre-copy.
func printPrecopy(_ outcome: LiveRegion.Outcome, daemon: String, paused what: String) {
    for r in outcome.rounds {
        print("\(daemon): pre-copy round \(r.index): \(r.pagesSent) pages sent (\(r.bytesSent >> 20) MiB as data) in \(r.nanoseconds / 1_000_000) ms, \(Int(r.rate) >> 20) MiB/s; \(r.dirtyPages) pages written during it; scan \(r.scanNanoseconds / 1000) µs")
    }
    if outcome.switched {
        print("\(daemon): switched to post-copy (\(outcome.reason.map { "\($0)" } ?? "")): final dirty set \(outcome.finalDirtyPages) pages, \(outcome.invalidatedPages) pages invalidated at the destination, \(what) paused \(Double(outcome.pauseNanoseconds / 1000) / 1000) ms before the switch")
    } else {
        print("\(daemon): pre-copy never switched to post-copy")
    }
}

/// A workload process that handed its live memory to the source daemon.
struct LiveWorkload {
    let region: ServedRegion
    let handoff: Handoff
    let pid: Int32

    /// Waits on `path` for the workload's handoff: its memory (one mapping) and a userfaultfd
    /// registered on it in WP mode with UFFD_FEATURE_WP_ASYNC.
    static func accept(on path: String, regionID: UInt32, policy: ConvergencePolicy, logger: Logger) throws -> LiveWorkload {
        let listener = try HandoffListener(path: path)
        logger.info("waiting for a workload to hand over its live memory on \(path)")
        let handoff = try listener.accept()
        let pid = try UnixSocket.peerProcess(handoff.connection)
        guard handoff.mappings.count == 1, let m = handoff.mappings.first, m.regionOffset == 0 else {
            throw HandoffError(message: "a live handoff must describe exactly one mapping at offset 0 (got \(handoff.mappings.count))")
        }
        let tracker = try WriteTracker(handedOver: handoff.uffd, pid: pid, range: m.range)
        let live = LiveRegion(tracker: tracker, policy: policy, pause: {
            try sendSignal(TerminationSignals.stop, to: pid)
            // SIGSTOP is asynchronous: wait until every thread of the process has stopped.
            try waitUntilStopped(pid)
        }, resume: {
            try sendSignal(TerminationSignals.resume, to: pid)
        })
        let region = ServedRegion(id: regionID, name: "pid\(pid)-live", pid: pid, address: m.base, length: Int(m.size), pageSize: m.pageSize, live: live)
        logger.info("live region \(regionID): \(m.size >> 20) MiB of process \(pid) at \(hex(m.base)), \(m.pageSize >> 10) KiB pages, write-tracked")
        return LiveWorkload(region: region, handoff: handoff, pid: pid)
    }
}
