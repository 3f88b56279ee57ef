#if RDMA
import Logging
import PagerKernel
import PagerRDMA
import PagerSource
import PagerTransport
import PagerWire
import Synchronization

/// The source's side of RDMA (``ReadService``): an RDMA CM listener on the TCP listener's
/// address and port number (spec §4.15) that admits queue pairs only for authenticated
/// sessions (``AdmissionGate``), one protection domain per session with the session's regions
/// registered in it for remote READ, and one RDMA_KEY per region on the session's demand
/// connection once its queue pair is in.
public final class RDMAReadService: ReadService, @unchecked Sendable {
    private struct Session {
        let regions: [ServedRegion]
        /// The session's demand connection now (a resume replaces it).
        let demand: @Sendable () -> (any FrameConnection)?
        /// Whether the server holds pages now (no keys go out while it does).
        let held: @Sendable () -> Bool
        /// Keys of queue pairs admitted while held, sent once released.
        var pendingKeys: [RemoteKeys.Grant] = []
        var domain: ProtectionDomain?
        var registrations: [UInt32: MemoryRegion] = [:]
        /// Writable mappings made for registrations on kernels before 6.2 (see prepare).
        var mappings: [WritableFileMapping] = []
        var connections: [(channel: AdmissionRequest.Channel, connection: RDMAConnection)] = []

        /// Lets go of the device's objects in the order they must go: the queue pairs (their
        /// peers are told), the registrations and the mappings behind them, the domain.
        mutating func tearDown() {
            for c in connections { c.connection.disconnect() }
            connections.removeAll()
            registrations.removeAll()
            mappings.removeAll()
            domain = nil
        }
    }
    private struct State {
        var gate = AdmissionGate()
        var sessions: [UInt64: Session] = [:]
        var running = true
    }
    /// Used by the accept thread only (after init): nil while the device is gone.
    private var listener: RDMAListener?
    private let address: String
    private let port: UInt16
    private let state = Mutex(State())
    private let logger: Logger
    private var thread: KernelThread?
    /// Queue pairs refused (their reasons are logged), for the summary.
    public var refused: Int { refusals.load(ordering: .relaxed) }
    private let refusals = Atomic<Int>(0)

    /// Listens on `address:port` (the TCP listener's) and starts the accept thread.
    public init(address: String, port: UInt16, logger: Logger) throws(KernelError) {
        listener = try RDMAListener(address: address, port: port)
        self.address = address
        self.port = port
        self.logger = logger
        thread = try KernelThread(name: "src-rdma-cm") { [self] in acceptLoop() }
    }

    /// Stops accepting and tears every queue pair down.
    public func stop() {
        state.withLock { $0.running = false }
        thread?.join()
        let sessions = state.withLock { state -> [Session] in
            defer { state.sessions.removeAll() }
            return Array(state.sessions.values)
        }
        for var s in sessions { s.tearDown() }
    }

    public func open(session: UInt64, admissionKey: [UInt8], regions: [ServedRegion], demand: @escaping @Sendable () -> (any FrameConnection)?,
                     held: @escaping @Sendable () -> Bool) {
        state.withLock { state in
            state.gate.open(session: session, key: admissionKey)
            state.sessions[session] = Session(regions: regions, demand: demand, held: held)
        }
    }

    public func close(session: UInt64) {
        let ended = state.withLock { state -> Session? in
            state.gate.close(session: session)
            return state.sessions.removeValue(forKey: session)
        }
        if var ended { ended.tearDown() }
    }

    public func pushKey(session: UInt64, region: UInt32) -> Message? {
        state.withLock { state in
            guard let s = state.sessions[session], s.connections.contains(where: { $0.channel == .push }),
                  let registration = s.registrations[region] else { return nil }
            return .rdmaKey(region: region, rkey: registration.rkey, address: registration.address, length: UInt64(registration.length))
        }
    }

    /// Connection requests, and the events of the queue pairs admitted (a disconnect or a
    /// device removal takes a queue pair out of its session, freeing its channel for a new one).
    /// A removed device takes the listener and every session's domain with it: the service
    /// listens again once the device is back (soft-RoCE re-added, a NIC reset), and queue pairs
    /// admitted then get a new domain and new keys.
    private func acceptLoop() {
        var relistenLogged = false
        while state.withLock({ $0.running }) {
            guard let listener else {
                do {
                    listener = try RDMAListener(address: address, port: port)
                    logger.info("RDMA: listening again on \(address):\(port) (the device is back)")
                    relistenLogged = false
                } catch {
                    if !relistenLogged { logger.warning("RDMA: cannot listen on \(address):\(port) yet (\(error)); trying every 500 ms") }
                    relistenLogged = true
                    sleepMilliseconds(500)
                }
                continue
            }
            let keysWaiting = sendReleasedKeys()
            let admitted = state.withLock { state in
                state.sessions.flatMap { id, session in session.connections.map { (id, $0.channel, $0.connection) } }
            }
            do {
                // Keys waiting for the release are looked at every 5 ms: faults come right after.
                let ready = try pollReadable([listener.eventDescriptor] + admitted.map(\.2.eventDescriptor), timeoutMilliseconds: keysWaiting ? 5 : 100,
                                             detail: "RDMA CM events")
                for (i, (session, channel, connection)) in admitted.enumerated() where ready[i + 1] {
                    guard let event = try connection.nextEvent(until: .after(nanoseconds: 1_000_000)) else { continue }
                    guard event.contains("DISCONNECTED") || event.contains("DEVICE_REMOVAL") else { continue }
                    state.withLock { state in
                        state.sessions[session]?.connections.removeAll { $0.connection === connection }
                        state.gate.disconnected(session: session, channel: channel)
                    }
                    logger.warning("session \(hex(session)): its \(channel) queue pair went (\(event)); a new one may connect")
                }
                if ready[0], let request = try listener.nextRequest(until: .after(nanoseconds: 1_000_000)) { admit(request) }
            } catch let error where error.errno == .noSuchAddressOrDevice {
                logger.warning("RDMA: \(error): every session's queue pairs and registrations go with it (pages come over TCP meanwhile)")
                forgetDevice()
                self.listener = nil
            } catch {
                logger.error("RDMA: the connection manager failed: \(error)")
                sleepMilliseconds(100)
            }
        }
    }

    /// The device went: every queue pair, registration and domain is dropped (in that order: a
    /// registration keeps its domain), the channels freed for queue pairs on the device to come.
    private func forgetDevice() {
        let dropped = state.withLock { state -> [Session] in
            var old: [Session] = []
            for (id, session) in state.sessions {
                old.append(session)
                for c in session.connections { state.gate.disconnected(session: id, channel: c.channel) }
                state.sessions[id] = Session(regions: session.regions, demand: session.demand, held: session.held)
            }
            return old
        }
        for var s in dropped { s.tearDown() }
    }

    /// A connection request: admitted (the session's domain and registrations made at its
    /// first queue pair, the keys sent after it is established) or refused with its reason.
    private func admit(_ request: ConnectionRequest) {
        let admitted: AdmissionRequest
        do {
            admitted = try state.withLock { (state) throws(AdmissionError) in try state.gate.admit(request.privateData) }
        } catch {
            refusals.add(1, ordering: .relaxed)
            logger.warning("RDMA: refused a queue pair: \(error)")
            request.reject(error.reasonForPeer)
            return
        }
        var accepted: RDMAConnection?
        do {
            let (domain, grants, demand) = try prepare(admitted.session, on: request)
            let connection = try request.accept(domain: domain, until: .after(nanoseconds: 5_000_000_000))
            accepted = connection
            let kept = state.withLock { state -> Bool in
                guard state.sessions[admitted.session] != nil else { return false }
                state.sessions[admitted.session]!.connections.append((admitted.channel, connection))
                return true
            }
            guard kept else {
                connection.disconnect()
                return
            }
            // While the server holds pages (a VM still writing its RAM), its keys wait: a READ
            // now would bring bytes the VM is still changing.
            let deferred = state.withLock { state -> Bool in
                guard let s = state.sessions[admitted.session], s.held() else { return false }
                state.sessions[admitted.session]!.pendingKeys = grants
                return true
            }
            if deferred {
                logger.info("session \(hex(admitted.session)): \(admitted.channel) queue pair admitted; its READ keys go once the pages are released")
                return
            }
            try send(grants, on: demand)
            logger.info("session \(hex(admitted.session)): \(admitted.channel) queue pair admitted; READ granted for \(grants.count) region(s)")
        } catch {
            // Whatever failed after the accept takes its queue pair down with it.
            if let accepted {
                accepted.disconnect()
                state.withLock { state in state.sessions[admitted.session]?.connections.removeAll { $0.connection === accepted } }
            }
            state.withLock { $0.gate.disconnected(session: admitted.session, channel: admitted.channel) }
            request.reject("the source could not set up the queue pair: \(error)")
            logger.error("session \(hex(admitted.session)): RDMA queue pair not set up: \(error)")
        }
    }

    /// RDMA_KEY frames for `grants` on the session's demand connection of now (after a resume
    /// the first one is gone).
    private func send(_ grants: [RemoteKeys.Grant], on demand: @Sendable () -> (any FrameConnection)?) throws {
        guard let connection = demand() else { throw KernelError("rdma_cm", .noSuchProcess, detail: "the session's demand connection is gone") }
        for grant in grants {
            try connection.send(.rdmaKey(region: grant.region, rkey: grant.rkey, address: grant.address, length: grant.length))
        }
    }

    /// Sends the keys that waited for the release, of sessions released since; true while
    /// some still wait.
    private func sendReleasedKeys() -> Bool {
        let (due, waiting) = state.withLock { state -> ([(UInt64, [RemoteKeys.Grant], @Sendable () -> (any FrameConnection)?)], Bool) in
            var due: [(UInt64, [RemoteKeys.Grant], @Sendable () -> (any FrameConnection)?)] = []
            var waiting = false
            for (id, s) in state.sessions where !s.pendingKeys.isEmpty {
                if s.held() { waiting = true; continue }
                due.append((id, s.pendingKeys, s.demand))
                state.sessions[id]!.pendingKeys = []
            }
            return (due, waiting)
        }
        for (id, grants, demand) in due {
            do {
                try send(grants, on: demand)
                logger.info("session \(hex(id)): pages released: READ granted for \(grants.count) region(s)")
            } catch {
                // The keys never reached the destination: its faults go over TCP.
                logger.error("session \(hex(id)): the READ keys could not be sent (\(error)): its pages come over TCP")
            }
        }
        return waiting
    }

    /// Registers a region's memory for remote READ. Before Linux 6.2 the kernel pins a
    /// read-only shared mapping for a device only by forcing a write, which fails (EFAULT):
    /// then a writable mapping of the region's file is registered instead (and returned, to be
    /// kept as long as the registration).
    private static func register(_ region: ServedRegion, _ base: UnsafeRawPointer, _ length: Int,
                                 in domain: ProtectionDomain) throws(KernelError) -> (MemoryRegion, WritableFileMapping?) {
        let first: KernelError
        do {
            return (try domain.register(UnsafeMutableRawPointer(mutating: base), length: length, access: .remoteRead), nil)
        } catch {
            first = error
        }
        guard first.errno == .badAddress, let writable = try region.writableFileMapping() else { throw first }
        return (try domain.register(writable.base, length: writable.length, access: .remoteRead), writable)
    }

    /// The session's protection domain and registrations (made once), and its demand connection.
    private func prepare(_ id: UInt64, on request: ConnectionRequest) throws -> (ProtectionDomain, [RemoteKeys.Grant], @Sendable () -> (any FrameConnection)?) {
        guard let context = request.context else { throw KernelError("rdma_cm", .noSuchAddressOrDevice, detail: "a request without a device") }
        guard var session = state.withLock({ $0.sessions[id] }) else { throw KernelError("rdma_cm", .noSuchProcess, detail: "the session ended") }
        let domain = try session.domain ?? ProtectionDomain(context: context)
        session.domain = domain
        for region in session.regions where session.registrations[region.id] == nil {
            guard let memory = region.localMemory, let base = memory.baseAddress else { continue }
            let (registration, writable) = try Self.register(region, base, memory.count, in: domain)
            session.registrations[region.id] = registration
            if let writable { session.mappings.append(writable) }
        }
        let grants = session.regions.compactMap { region in
            session.registrations[region.id].map { RemoteKeys.Grant(region: region.id, rkey: $0.rkey, address: $0.address, length: UInt64($0.length)) }
        }
        let demand = session.demand
        let domainKept = session.domain
        let registrations = session.registrations
        let mappings = session.mappings
        state.withLock { state in
            state.sessions[id]?.domain = domainKept
            state.sessions[id]?.registrations = registrations
            state.sessions[id]?.mappings = mappings
        }
        return (domain, grants, demand)
    }
}
#endif
