import Logging
import PagerKernel
import PagerTransport
import PagerTrust
import PagerWire
import Synchronization

/// Serves regions to destinations over TCP.
///
/// Each destination opens a *demand* connection (HELLO with no session: a new session) and a
/// *push* connection (HELLO resuming that session). Requests on the demand connection are
/// answered at once, in order, by that connection's thread, so a demand page never waits
/// behind bulk data. The push connection streams every page of every region in order, zero
/// runs as ZERO frames; a prefetch request that arrives on it is served first and moves the
/// push cursor to just after it (as QEMU's postcopy restarts its scan after a requested page).
/// A malformed frame or bad request ends that session only; the server keeps serving others.
///
/// Before its handshake completes a connection has a thread, a socket and a small buffer, and
/// no more: Admission.swift bounds how many are in handshake (evicting the oldest to admit a
/// newcomer), and the handshake must be complete before its deadline.
///
/// The rooms: this file accepts connections, holds and releases (ReleaseGate.swift) and
/// stops; Admission.swift decides which connections may be in their handshake;
/// Connection.swift runs one connection; Handshake.swift, DemandService.swift,
/// PushService.swift, PrecopyRounds.swift and PageSender.swift do what their names say;
/// SourceSession.swift is one destination's state, SessionRegistry.swift all of them and the
/// totals; ServedRegion.swift and LiveRegion.swift are what is served.
public final class SourceServer: @unchecked Sendable {
    public let regions: [ServedRegion]
    public let listener: TCPListener
    /// Whom it serves: only destinations holding a key of the ring, or (insecure) anyone.
    public let authentication: PeerAuthentication
    let logger: Logger
    let registry = SessionRegistry()
    let stopping = Atomic<Bool>(false)
    let gate = ReleaseGate()
    let active = Atomic<Int>(0)
    /// The connections being served, each by its own thread: ``stop()`` shuts them down, and
    /// ``run()`` returns only once every one has ended, so that no thread of this server
    /// touches a region's memory after `run()` returned (its owner may unmap it then).
    private let connections = WaitableState([ObjectIdentifier: TCPSocket]())
    /// The connections in their handshake: at most ``maxHandshakes``, the oldest evicted first.
    let admission = Admission()

    /// Totals over all sessions, for the summary.
    public struct Counters: Sendable {
        public var sessions = 0
        public var demandRequests = 0
        public var prefetchRequests = 0
        public var bytesSent: UInt64 = 0
        public var zeroBytes: UInt64 = 0
        /// Data the push left to RDMA READs of the destination (PUSH_READ, §4.11a).
        public var pushReadBytes: UInt64 = 0
        public var failedSessions = 0
        /// Connections refused because the peer did not prove it holds a key (counted in
        /// ``failedSessions`` too).
        public var authenticationFailures = 0
        /// Handshakes ended to make room for a newer one (a connection flood, or a destination
        /// retrying while its earlier attempts hang).
        public var handshakesEvicted = 0
        /// Handshakes not complete within ``SourceServer/handshakeTimeoutNanoseconds``.
        public var handshakesTimedOut = 0
        /// Handshakes the server refused (a bad or malformed HELLO, no thread to run one on).
        public var handshakesRefused = 0
        /// Handshakes whose peer closed or reset the connection before completing them.
        public var handshakesAbandoned = 0
        /// Connections that resumed a session after one of its connections was lost.
        public var resumes = 0
        /// Sessions closed because no connection came back within the linger time.
        public var lingerExpired = 0
        /// Bytes sent again after resumes: sent before, lost in flight with the connections.
        public var resentBytes: UInt64 = 0

        /// The handshake counters as the daemons print them.
        public var handshakeSummary: String {
            "handshakes: \(handshakesEvicted) evicted, \(handshakesTimedOut) timed out, \(handshakesRefused) refused, \(handshakesAbandoned) abandoned"
        }
    }

    /// Push frames carry at most this many bytes (at least one page of the region). Queued
    /// prefetch requests are answered between two chunks, so a small chunk lets them overtake
    /// the bulk sooner; destinations with 2 MiB pages assemble a huge page from its chunks.
    public var pushChunk = 512 << 10

    /// The push connection keeps little data queued (`SO_SNDBUF`, and `TCP_NOTSENT_LOWAT` for
    /// what is not sent yet): a prefetch answer waits behind at most this much bulk data
    /// instead of several MiB of it. With a TCG guest, 8 MiB buffers made faults on prefetched
    /// pages wait up to 25 ms; see docs/measurements.md.
    public var pushSendBuffer = 512 << 10
    public var pushUnsentLimit = 128 << 10

    /// The push runs on idle CPU only (`SCHED_IDLE`, true) or competes fairly (false): a live
    /// region whose writer keeps this host's CPUs busy (a running guest's vCPU during
    /// pre-copy) would otherwise starve the rounds.
    public var backgroundPush = true

    /// Demand channels are served by real-time threads (`SCHED_FIFO` 1, see
    /// ``makeCurrentThreadUrgent()``): a demand request never waits behind the push or any
    /// other busy thread on this host for a time slice. Default: ``DemandPriority/auto``.
    public var urgentDemand = DemandPriority.auto.isRealtime

    /// Refuse destinations that do not offer encryption (with keys only).
    public var requireEncryption = false

    /// Serves one-sided reads (RDMA) to authenticated sessions that offer `rdma`; nil: none.
    public var readService: (any ReadService)?

    /// When encrypted connections update their keys (tests lower it to see updates happen).
    public var recordLimits = RecordLimits.standard
    /// A connection whose whole handshake has not arrived within this time of its accept is
    /// closed (an ERROR `timeout` says why). One deadline for all of it, not per read: a peer
    /// that trickles its HELLO a byte at a time is cut off as surely as one that says nothing.
    public var handshakeTimeoutNanoseconds: UInt64 = 10_000_000_000

    /// A session whose connections were lost without GOODBYE is kept this long for the
    /// destination to resume it (§6), then freed.
    public var sessionLingerNanoseconds: UInt64 = 60_000_000_000

    /// Session sockets fail once data sent has gone unacknowledged this long
    /// (`TCP_USER_TIMEOUT`): a blackholed destination is noticed, and its session lingers.
    /// Longer than the destination's 5 s: Linux also counts a zero window against it, and a
    /// destination whose push receiver runs on idle CPU only may be slow to read; a
    /// destination that resumes replaces the connection sooner anyway.
    public var userTimeoutMilliseconds = 20_000

    /// At most this many connections in their handshake at once; a newcomer evicts the oldest.
    /// Each holds a thread until it completes, is evicted or times out: this bounds them (and
    /// as many again evicted ones while their threads end, see ``AdmissionTable``).
    public var maxHandshakes = 64

    /// At most this many of them from one host: one flooding host evicts its own handshakes
    /// before anyone else's.
    public var maxHandshakesPerAddress = 8

    public init(listen: Endpoint, regions: [ServedRegion], authentication: PeerAuthentication, logger: Logger) throws(KernelError) {
        self.regions = regions
        self.authentication = authentication
        self.logger = logger
        listener = try TCPListener(listen)
    }

    /// Totals over all sessions: those ended plus those being served (their counts so far),
    /// and the handshakes that did not complete.
    public var counts: Counters {
        var totals = registry.totals
        let handshakes = admission.counts
        totals.handshakesEvicted = handshakes.evicted
        totals.handshakesTimedOut = handshakes.timedOut
        totals.handshakesRefused = handshakes.refused
        totals.handshakesAbandoned = handshakes.abandoned
        return totals
    }

    /// Connections in their handshake now (each with its thread; evicted ones still ending
    /// are not counted, and are at most as many again).
    public var handshakesInProgress: Int { admission.inHandshake }

    /// Connections with a thread of this server now: in handshake or served.
    public var connectionCount: Int { connections.withLock { $0.count } }

    /// Waits until at most `limit` connections have a thread of this server (true), or
    /// `withinNanoseconds` passes first (false).
    public func waitUntilConnections(atMost limit: Int, withinNanoseconds: UInt64) -> Bool {
        connections.wait(until: { $0.count <= limit }, deadline: monotonicNanoseconds() + withinNanoseconds)
    }

    /// Waits until a destination has come and every session has ended (all its connections
    /// closed): true. False if no session started within `firstWithinNanoseconds`.
    public func waitUntilSessionsEnded(firstWithinNanoseconds: UInt64) -> Bool {
        registry.waitUntilAllEnded(deadlineForFirst: monotonicNanoseconds() + firstWithinNanoseconds)
    }

    /// Sessions being served now.
    public var activeSessions: Int { active.load(ordering: .relaxed) }

    /// Withholds page data until ``release()`` (see ``ReleaseGate``).
    public func hold() { gate.hold() }

    /// Lets page data flow (the writer of the memory has stopped).
    public func release() { gate.release() }

    /// Blocks a sender while the server is held; false if the session closed or the server
    /// stopped meanwhile.
    func waitUntilReleased(_ session: SourceSession) -> Bool {
        gate.waitUntilReleased(unless: { session.isClosed || stopping.load(ordering: .acquiring) })
    }

    /// Accepts connections until ``stop()``, each admitted to its handshake (Admission.swift)
    /// and served on its own thread; returns once every connection's thread has ended.
    public func run() {
        if case .insecureNone = authentication {
            logger.warning("INSECURE: --insecure-no-auth: anyone who can connect to \(listener.endpoint) can read the memory served here")
        }
        logger.info("serving \(regions.count) region(s) on \(listener.endpoint), \(authentication): \(regions.map { "\($0.id)=\($0.name) (\($0.length >> 20) MiB, \($0.pageSize >> 10) KiB pages)" }.joined(separator: ", "))")
        admission.limit(to: maxHandshakes, perAddress: maxHandshakesPerAddress)
        while !stopping.load(ordering: .acquiring) {
            let socket: TCPSocket
            do { socket = try listener.accept() } catch {
                if stopping.load(ordering: .acquiring) { break }
                logger.error("accept failed: \(error)")
                continue
            }
            // From the accept: the time spent waiting for room counts against the handshake.
            let deadline = Deadline.after(nanoseconds: handshakeTimeoutNanoseconds)
            guard let (ticket, evicted) = admission.admit(socket, unless: { stopping.load(ordering: .acquiring) }) else { break }
            if evicted > 0 { reportEvictions(evicted, admitting: socket) }
            start(socket, Admitted(ticket: ticket, deadline: deadline))
        }
        // Every connection was shut down by stop(): their threads end promptly.
        _ = connections.wait(until: { $0.isEmpty })
    }

    /// Starts the thread of an admitted connection.
    private func start(_ socket: TCPSocket, _ admitted: Admitted) {
        let key = ObjectIdentifier(socket)
        connections.change { $0[key] = socket }
        // Stopped between accept and here: stop() did not see this socket.
        if stopping.load(ordering: .acquiring) { socket.shutdown() }
        do {
            _ = try KernelThread(name: "src-conn") { [self] in
                defer { connections.change { _ = $0.removeValue(forKey: key) } }
                serve(FrameChannel(socket), admitted)
            }
        } catch {
            _ = admission.failed(admitted.ticket, nil)
            connections.change { _ = $0.removeValue(forKey: key) }
            logger.error("cannot start a thread for \(socket.peer): \(error)")
        }
    }

    /// Logs evictions: each at debug level, and a warning at the 1st, 10th, 100th... so that a
    /// flood shows in the log without writing a line per connection it makes.
    private func reportEvictions(_ evicted: Int, admitting socket: TCPSocket) {
        let total = admission.counts.evicted
        logger.debug("\(socket.peer): admitted to its handshake, evicting \(evicted) older one(s)")
        var mark = 1
        while mark * 10 <= total { mark *= 10 }
        if total - evicted < mark {
            logger.warning("\(total) handshake(s) evicted so far (at most \(maxHandshakes) at once, \(maxHandshakesPerAddress) per host; the oldest go first): a connection flood? The latest from \(socket.peerHost)")
        }
    }

    /// Stops accepting and closes every session being served.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        listener.shutdown()
        gate.wakeAll()
        admission.wakeAll() // the accept loop may be waiting for room
        for session in registry.served { session.close(.serverStopped) }
        // Connections still in their handshake (or any other) belong to no session yet.
        for socket in connections.withLock({ Array($0.values) }) { socket.shutdown() }
    }
}

/// A connection's place in the handshake table and the deadline of its whole handshake.
struct Admitted {
    let ticket: Admission.Ticket
    let deadline: Deadline
}

enum SessionError: Error {
    case refuse(ErrorCode, String)
}
