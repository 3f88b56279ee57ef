import ArgumentParser
import Logging
import PagerCore
import PagerDestination
import PagerKernel
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
    @Option(help: "Log level: trace, debug, info, warning, error.") var logLevel: String = "info"

    func validate() throws {
        guard Endpoint(listen) != nil else { throw ValidationError("--listen must be ADDR:PORT (IPv4), got \(listen)") }
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
        server.run()
        if let outcome = live?.region.live?.outcome { printPrecopy(outcome, daemon: "pagerd source", paused: "workload") }
        let c = server.counts
        serviceNotifier.status("stopped: \(c.sessions) session(s), \(c.bytesSent >> 20) MiB sent as bytes, \(c.failedSessions) ended by errors")
        print("pagerd source: \(c.sessions) session(s), \(c.demandRequests) demand and \(c.prefetchRequests) prefetch requests, \(c.bytesSent >> 20) MiB sent as bytes, \(c.zeroBytes >> 20) MiB as zero ranges, \(c.failedSessions) session(s) ended by errors, \(c.authenticationFailures) connection(s) refused for failed authentication, \(c.resumes) connection(s) resumed (\(c.resentBytes >> 10) KiB sent again), \(c.lingerExpired) session(s) not resumed in time; \(c.handshakeSummary)")
    }
}

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
    @Option(help: "Unix socket path to receive userfaultfd handoffs on.") var uffdSocket: String
    @Option(help: "Region (id or name) handoffs map onto, when the source serves several.") var region: String?
    @Flag(help: "Exit after the first migration completes (exit status 1 if it failed).") var once = false
    @Flag(help: "No background push: pages arrive only when touched or prefetched (for measuring demand paging).") var noPush = false
    @Flag(help: "No prefetch around faults: fetch exactly the faulting page.") var noPrefetch = false
    @Flag(help: "Run the background push at normal priority instead of on idle CPU only (for workloads that keep every CPU busy).") var normalPriorityPush = false
    @Option(help: "Fault threads: auto (real-time when this process may use one CPU only), realtime (SCHED_FIFO 1), normal.") var demandPriority = DemandPriority.auto
    @Option(help: "Declare the connections lost after this many milliseconds without a frame from the source while pages are outstanding (pings go every 250 ms of silence), then resume.") var stallTimeoutMs = 1_500
    @Option(help: "After a lost connection, faults wait this many seconds for the session to resume; then missing pages are poisoned (0: poison at once).") var reconnectTimeoutS = 60.0
    @Flag(help: "Ask the source for a CRC-32C of every 4 KiB page and check each before installing it.") var checksums = false
    @Flag(help: "Receive the source's pre-copy rounds before the handoff (one migration; implies --once).") var precopy = false
    @OptionGroup var keys: AuthenticationOptions
    @Option(help: "Log level: trace, debug, info, warning, error.") var logLevel: String = "info"

    func validate() throws {
        guard Endpoint(connect) != nil else { throw ValidationError("--connect must be ADDR:PORT (IPv4), got \(connect)") }
        guard stallTimeoutMs >= 100 else { throw ValidationError("--stall-timeout-ms must be at least 100, got \(stallTimeoutMs)") }
        guard reconnectTimeoutS >= 0, reconnectTimeoutS <= 86_400 else { throw ValidationError("--reconnect-timeout-s must be 0 to 86400, got \(reconnectTimeoutS)") }
    }

    func run() throws {
        let logger = makeLogger("pagerd.dest", logLevel)
        let authentication = try keys.resolve(insecureMeans: InsecureConsequence.destination)
        // A crash or a fatal signal while this daemon holds a workload's memory poisons what is
        // missing first (see PoisonGuard): the workload gets SIGBUS, never zeros.
        try PoisonGuard.installFatalSignalHandlers()
        try startGuardian(logger)
        let listener = try HandoffListener(path: uffdSocket)
        let stopping = Atomic<Bool>(false)
        try TerminationSignals.start { signal in
            // The first signal stops new handoffs and lets migrations in progress finish; a
            // second one aborts them: what is not local yet is poisoned before the exit.
            if stopping.exchange(true, ordering: .acquiringAndReleasing) {
                let pages = PoisonGuard.poisonAll()
                logger.error("signal \(signal) again: migrations aborted, \(pages) pages not yet local were poisoned (the workloads get SIGBUS there, never zeros)")
                print("pagerd dest: aborted by signal \(signal): \(pages) pages not yet local were poisoned")
                exitProcess(1)
            }
            logger.info("signal \(signal): no new handoffs; migrations in progress go on (signal again to abort them)")
            serviceNotifier.stopping(status: "no new handoffs (signal \(signal)); migrations in progress go on")
            listener.close()
        }
        if precopy {
            serviceNotifier.ready(status: "receiving pre-copy rounds from \(connect); the handoff comes after the switch")
            guard migratePrecopy(listener, authentication, logger: logger) else { throw ExitCode(1) }
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
            let work: @Sendable () -> Void = {
                if !migrate(handoff, authentication, logger: logger) { failures.add(1, ordering: .relaxed) }
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
        var f: Features = [.resume, .hugePages]
        if checksums { f.insert(.checksums) }
        if precopy { f.insert(.invalidation) }
        if keys.encrypt { f.insert(.encryption) }
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
    func migratePrecopy(_ listener: HandoffListener, _ authentication: PeerAuthentication, logger: Logger) -> Bool {
        do {
            let client = try DestinationClient(source: Endpoint(connect)!, clientName: "pagerd-dest", features: features,
                                               authentication: authentication)
            defer { client.close() }
            let region = try client.region(selectedBy: self.region)
            logger.info("session \(hex(client.session)) with \(connect): live region \(region.id) \"\(region.name)\" (\(region.length >> 20) MiB): receiving pre-copy rounds")
            for other in client.regions where other.id != region.id {
                try client.demand.send(.complete(region: other.id, residentBytes: 0))
            }
            var connections = SessionConnections(demand: client.demand, push: client.push)
            defer { connections.demand.shutdown(); connections.push.shutdown() }
            let resumption = reconnectTimeoutS > 0 ? PrecopyResumption(resumer: client.resumer, stallTimeoutMilliseconds: stallTimeoutMs,
                                                                      reconnectTimeoutMilliseconds: Int(reconnectTimeoutS * 1000)) : nil
            let staged = try StagedPages.receive(region: region, connections: &connections, resumption: resumption, logger: logger)
            print("pagerd dest: pre-copy done after \(String(format: 1, Double(staged.nanoseconds) / 1e9)) s: \(staged.stagedBytes >> 20) MiB staged, \(staged.bytesReceived >> 20) MiB received as data, \(staged.invalidatedBytes >> 10) KiB invalidated")
            fflushStandardOutput()
            logger.info("switched to post-copy: waiting for the userfaultfd handoff on \(uffdSocket)")
            let handoff = try listener.accept()
            defer { try? handoff.connection.close() }
            return migrate(handoff, authentication, logger: logger, client: client, connections: connections, region: region, staged: staged)
        } catch {
            // Before the handoff nothing of the workload is here, and nothing was poisoned.
            let reason = (error as? ResolveError)?.cause ?? "\(error)"
            logger.error("pre-copy failed: \(reason)")
            print("pagerd dest: migration FAILED in pre-copy, before any handoff (the workload still runs on the source): \(reason)")
            fflushStandardOutput()
            return false
        }
    }

    /// Runs one migration; returns false (after logging why) if it failed.
    func migrate(_ handoff: Handoff, _ authentication: PeerAuthentication, logger: Logger, client existing: DestinationClient? = nil,
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
            let connections = current ?? SessionConnections(demand: client.demand, push: client.push)
            let resolver = try FaultResolver(uffd: handoff.uffd, region: region, mappings: handoff.mappings,
                                             demand: connections.demand, push: noPush ? nil : connections.push, configuration: configuration, logger: logger)
            let r = try resolver.run()
            missing.release()
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
              bytes received    \(r.bytesReceived >> 20) MiB
              outages           \(outageSummary((staged?.outages ?? []) + r.outages))
            """)
            // stdout is a file or the journal's pipe for a daemon: a summary must not wait in
            // the buffer for the process to exit.
            fflushStandardOutput()
            return true
        } catch {
            let poisoned = missing.poisonMissing()
            serviceNotifier.status("last migration FAILED: \(error)")
            logger.error("migration failed: \(error)")
            print("pagerd dest: migration FAILED: \(error); \(poisoned) pages not yet local were poisoned (the workload gets SIGBUS there, never zeros)")
            fflushStandardOutput()
            return false
        }
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

func makeLogger(_ label: String, _ level: String) -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = Logger.Level(rawValue: level) ?? .info
    return logger
}

extension DemandPriority: ExpressibleByArgument {}

/// systemd's notification socket (`Type=notify`), read once from `$NOTIFY_SOCKET`.
let serviceNotifier = ServiceNotifier()

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
