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
/// The rooms: this file accepts connections, holds and releases (ReleaseGate.swift) and
/// stops; Connection.swift runs one connection; Handshake.swift, DemandService.swift,
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

    /// Totals over all sessions, for the summary.
    public struct Counters: Sendable {
        public var sessions = 0
        public var demandRequests = 0
        public var prefetchRequests = 0
        public var bytesSent: UInt64 = 0
        public var zeroBytes: UInt64 = 0
        public var failedSessions = 0
        /// Connections refused because the peer did not prove it holds a key (counted in
        /// ``failedSessions`` too).
        public var authenticationFailures = 0
    }

    /// Push frames carry at most this many bytes (at least one page of the region). Queued
    /// prefetch requests are answered between two chunks, so a small chunk lets them overtake
    /// the bulk sooner; destinations with 2 MiB pages assemble a huge page from its chunks.
    public var pushChunk = 512 << 10

    /// The push connection keeps little data queued (`SO_SNDBUF`, and `TCP_NOTSENT_LOWAT` for
    /// what is not sent yet): a prefetch answer waits behind at most this much bulk data
    /// instead of several MiB of it. With a TCG guest, 8 MiB buffers made faults on prefetched
    /// pages wait up to 25 ms; see the README's measurements.
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

    /// When encrypted connections update their keys (tests lower it to see updates happen).
    public var recordLimits = RecordLimits.standard

    /// A connection that has not completed its HELLO within this time is closed.
    public var handshakeTimeoutMilliseconds = 10_000

    public init(listen: Endpoint, regions: [ServedRegion], authentication: PeerAuthentication, logger: Logger) throws(KernelError) {
        self.regions = regions
        self.authentication = authentication
        self.logger = logger
        listener = try TCPListener(listen)
    }

    /// Totals over all sessions: those ended plus those being served (their counts so far).
    public var counts: Counters { registry.totals }

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

    /// Accepts connections until ``stop()``, each served on its own thread; returns once every
    /// connection's thread has ended.
    public func run() {
        if case .insecureNone = authentication {
            logger.warning("INSECURE: --insecure-no-auth: anyone who can connect to \(listener.endpoint) can read the memory served here")
        }
        logger.info("serving \(regions.count) region(s) on \(listener.endpoint), \(authentication): \(regions.map { "\($0.id)=\($0.name) (\($0.length >> 20) MiB, \($0.pageSize >> 10) KiB pages)" }.joined(separator: ", "))")
        while !stopping.load(ordering: .acquiring) {
            let socket: TCPSocket
            do { socket = try listener.accept() } catch {
                if stopping.load(ordering: .acquiring) { break }
                logger.error("accept failed: \(error)")
                continue
            }
            let key = ObjectIdentifier(socket)
            connections.change { $0[key] = socket }
            // Stopped between accept and here: stop() did not see this socket.
            if stopping.load(ordering: .acquiring) { socket.shutdown() }
            do {
                _ = try KernelThread(name: "src-conn") { [self] in
                    defer { connections.change { _ = $0.removeValue(forKey: key) } }
                    serve(FrameChannel(socket))
                }
            } catch {
                connections.change { _ = $0.removeValue(forKey: key) }
                logger.error("cannot start a thread for \(socket.peer): \(error)")
            }
        }
        // Every connection was shut down by stop(): their threads end promptly.
        _ = connections.wait(until: { $0.isEmpty })
    }

    /// Stops accepting and closes every session being served.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        listener.shutdown()
        gate.wakeAll()
        for session in registry.served { session.close(.serverStopped) }
        // Connections still in their handshake (or any other) belong to no session yet.
        for socket in connections.withLock({ Array($0.values) }) { socket.shutdown() }
    }
}

enum SessionError: Error {
    case refuse(ErrorCode, String)
}
