#if RDMA
import CRDMA
import PagerKernel
import SystemPackage

/// One RDMA CM event, copied out of librdmacm's buffer (which is freed by the acknowledgement).
struct CMEvent {
    let type: rdma_cm_event_type
    let status: Int32
    let id: UnsafeMutablePointer<rdma_cm_id>?
    let privateData: [UInt8]
    let initiatorDepth: UInt8
    let responderResources: UInt8

    var name: String { String(cString: rdma_event_str(type)) }
}

/// Waits for the next event on `channel` until `deadline` (nil: none came) and acknowledges it.
func nextCMEvent(_ channel: UnsafeMutablePointer<rdma_event_channel>, until deadline: Deadline, what: String) throws(KernelError) -> CMEvent? {
    guard try pollReadable(FileDescriptor(rawValue: channel.pointee.fd), until: deadline, detail: what) else { return nil }
    var raw: UnsafeMutablePointer<rdma_cm_event>? = nil
    guard rdma_get_cm_event(channel, &raw) == 0, let raw else { throw verbsError("rdma_get_cm_event", detail: what) }
    let conn = raw.pointee.param.conn
    let data: [UInt8] = conn.private_data.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(conn.private_data_len))) } ?? []
    let event = CMEvent(type: raw.pointee.event, status: raw.pointee.status, id: raw.pointee.id, privateData: data,
                        initiatorDepth: conn.initiator_depth, responderResources: conn.responder_resources)
    rdma_ack_cm_event(raw)
    return event
}

/// A reliable-connected queue pair set up through RDMA CM, with its own event channel,
/// completion channel and completion queue; everything is torn down when it is released.
public final class RDMAConnection: @unchecked Sendable {
    let events: UnsafeMutablePointer<rdma_event_channel>
    let id: UnsafeMutablePointer<rdma_cm_id>
    /// Released in deinit before the identifier: once a removed device's last identifier is
    /// gone, librdmacm closes the device, and nothing of it may be freed after that.
    private var domainKept: ProtectionDomain?
    public var domain: ProtectionDomain { domainKept! }
    let completionChannel: UnsafeMutablePointer<ibv_comp_channel>
    let cq: UnsafeMutablePointer<ibv_cq>
    public let queue: VerbsQueue
    /// The depths it was made with.
    public let settings: QueueSettings
    /// The peer's private data: the connection request's (on the accepting side).
    public let peerPrivateData: [UInt8]
    private var connected = false

    /// Takes `id` (already on `events`) and gives it a completion queue and a queue pair in `domain`.
    init(events: UnsafeMutablePointer<rdma_event_channel>, id: UnsafeMutablePointer<rdma_cm_id>, domain: ProtectionDomain,
         settings: QueueSettings, peerPrivateData: [UInt8]) throws(KernelError) {
        guard let context = id.pointee.verbs else { throw KernelError("rdma_cm_id", .noSuchAddressOrDevice, detail: "no device bound") }
        guard let completionChannel = ibv_create_comp_channel(context) else {
            rdma_destroy_id(id)
            rdma_destroy_event_channel(events)
            throw verbsError("ibv_create_comp_channel")
        }
        guard let cq = ibv_create_cq(context, Int32(settings.sendDepth), nil, completionChannel, 0) else {
            let error = verbsError("ibv_create_cq", detail: "\(settings.sendDepth) entries")
            ibv_destroy_comp_channel(completionChannel)
            rdma_destroy_id(id)
            rdma_destroy_event_channel(events)
            throw error
        }
        var attributes = ibv_qp_init_attr()
        attributes.send_cq = cq
        attributes.recv_cq = cq
        attributes.cap = ibv_qp_cap(max_send_wr: UInt32(settings.sendDepth), max_recv_wr: 1, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0)
        attributes.qp_type = IBV_QPT_RC
        attributes.sq_sig_all = 1
        guard rdma_create_qp(id, domain.pd, &attributes) == 0, let qp = id.pointee.qp else {
            let error = verbsError("rdma_create_qp", detail: "reliable connected, \(settings.sendDepth) send entries")
            ibv_destroy_cq(cq)
            ibv_destroy_comp_channel(completionChannel)
            rdma_destroy_id(id)
            rdma_destroy_event_channel(events)
            throw error
        }
        self.events = events
        self.id = id
        domainKept = domain
        self.completionChannel = completionChannel
        self.cq = cq
        queue = VerbsQueue(qp: qp, cq: cq)
        self.settings = settings
        self.peerPrivateData = peerPrivateData
    }

    /// Everything of the device in the order it must go: the queue pair, its completion queue
    /// and channel, the domain (unless registrations elsewhere still hold it: release those
    /// first), the events not read yet (a DEVICE_REMOVAL among them tells librdmacm to close
    /// the device once its identifiers are gone, which a removed device waits for), the
    /// identifier.
    deinit {
        if connected { rdma_disconnect(id) }
        rdma_destroy_qp(id)
        ibv_destroy_cq(cq)
        ibv_destroy_comp_channel(completionChannel)
        domainKept = nil
        while case .some = try? nextCMEvent(events, until: .after(nanoseconds: 0), what: "the events left") {}
        rdma_destroy_id(id)
        rdma_destroy_event_channel(events)
    }

    /// The RDMA device the queue pair is on (`ibv_get_device_name`), e.g. `rxe0`, `mlx5_0`.
    public var deviceName: String {
        guard let device = id.pointee.verbs?.pointee.device, let name = ibv_get_device_name(device) else { return "?" }
        return String(cString: name)
    }

    /// Waits up to `nanoseconds` for a DEVICE_REMOVAL among the events not read yet (it may
    /// follow a DISCONNECTED): true if one came.
    public func awaitDeviceRemoval(nanoseconds: UInt64) -> Bool {
        let deadline = Deadline.after(nanoseconds: nanoseconds)
        while let event = try? nextCMEvent(events, until: deadline, what: "a device removal") {
            if event.type == RDMA_CM_EVENT_DEVICE_REMOVAL { return true }
        }
        return false
    }

    /// Connects to a listener at `address:port` (`rdma_resolve_addr`, `rdma_resolve_route`,
    /// `rdma_connect`) with `privateData` (the admission request), until `deadline`.
    public static func connect(to address: String, port: UInt16, privateData: [UInt8], settings: QueueSettings = QueueSettings(),
                               until deadline: Deadline) throws(KernelError) -> RDMAConnection {
        let (events, id) = try newIdentifier()
        func fail(_ error: KernelError) -> KernelError {
            rdma_destroy_id(id)
            rdma_destroy_event_channel(events)
            return error
        }
        let peer = "\(address):\(port)"
        let milliseconds = Int32(clamping: max(1, deadline.remainingNanoseconds / 1_000_000))
        let resolved = pager_rdma_resolve_ipv4(id, address, port, milliseconds)
        if resolved != 0 {
            throw fail(KernelError("rdma_resolve_addr", Errno(rawValue: -resolved),
                                   detail: resolved == -Errno.invalidArgument.rawValue ? "\"\(address)\" is not an IPv4 address" : peer))
        }
        try expect(RDMA_CM_EVENT_ADDR_RESOLVED, on: events, until: deadline, what: "resolving \(peer)", cleanup: fail)
        if rdma_resolve_route(id, milliseconds) != 0 { throw fail(verbsError("rdma_resolve_route", detail: peer)) }
        try expect(RDMA_CM_EVENT_ROUTE_RESOLVED, on: events, until: deadline, what: "the route to \(peer)", cleanup: fail)
        guard let context = id.pointee.verbs else { throw fail(KernelError("rdma_resolve_addr", .noSuchAddressOrDevice, detail: "\(peer): no RDMA device")) }
        let domain: ProtectionDomain
        do { domain = try ProtectionDomain(context: context) } catch { throw fail(error) }
        let connection = try RDMAConnection(events: events, id: id, domain: domain, settings: settings, peerPrivateData: [])
        let depth = UInt8(clamping: min(settings.readDepth, Int(deviceAttributes(context)?.max_qp_init_rd_atom ?? 1)))
        var parameters = rdma_conn_param()
        parameters.initiator_depth = depth
        parameters.responder_resources = 0
        parameters.retry_count = 7
        parameters.rnr_retry_count = 7
        let started = privateData.withUnsafeBytes { bytes in
            parameters.private_data = bytes.baseAddress
            parameters.private_data_len = UInt8(bytes.count)
            return rdma_connect(id, &parameters)
        }
        if started != 0 { throw verbsError("rdma_connect", detail: peer) }
        guard let event = try nextCMEvent(events, until: deadline, what: "connecting to \(peer)") else {
            throw KernelError("rdma_connect", .timedOut, detail: "\(peer): no answer within \(deadline.allowedDescription)")
        }
        switch event.type {
        case RDMA_CM_EVENT_ESTABLISHED:
            connection.connected = true
            return connection
        case RDMA_CM_EVENT_REJECTED:
            let reason = String(decoding: event.privateData.prefix { $0 != 0 }, as: UTF8.self)
            throw KernelError("rdma_connect", .connectionRefused, detail: "\(peer) refused the queue pair: \(reason.isEmpty ? "status \(event.status)" : reason)")
        default:
            throw KernelError("rdma_connect", .connectionAbort, detail: "\(peer): \(event.name) (status \(event.status))")
        }
    }

    /// Ends the connection (`rdma_disconnect`): the queue pair goes to the error state and its
    /// outstanding requests flush.
    public func disconnect() {
        guard connected else { return }
        connected = false
        rdma_disconnect(id)
    }

    /// The next connection event until `deadline` (nil: none): a disconnect, a device removal.
    public func nextEvent(until deadline: Deadline) throws(KernelError) -> String? {
        guard let event = try nextCMEvent(events, until: deadline, what: "the connection's events") else { return nil }
        if event.type == RDMA_CM_EVENT_DISCONNECTED { connected = false }
        return event.name
    }

    /// Readable when a connection event is waiting (for a poll set).
    public var eventDescriptor: FileDescriptor { FileDescriptor(rawValue: events.pointee.fd) }
    /// Readable when a completion was signalled after `queue.requestNotification()`.
    public var completionDescriptor: FileDescriptor { FileDescriptor(rawValue: completionChannel.pointee.fd) }

    /// Takes the completion channel's event after `completionDescriptor` turned readable
    /// (`ibv_get_cq_event`, `ibv_ack_cq_events`), so it can be armed again.
    public func acknowledgeCompletionEvent() throws(KernelError) {
        var eventCQ: UnsafeMutablePointer<ibv_cq>? = nil
        var context: UnsafeMutableRawPointer? = nil
        guard ibv_get_cq_event(completionChannel, &eventCQ, &context) == 0 else { throw verbsError("ibv_get_cq_event") }
        ibv_ack_cq_events(cq, 1)
    }

    fileprivate func markConnected() { connected = true }
}

func expect(_ type: rdma_cm_event_type, on events: UnsafeMutablePointer<rdma_event_channel>, until deadline: Deadline, what: String,
            cleanup: (KernelError) -> KernelError) throws(KernelError) {
    let event: CMEvent?
    do { event = try nextCMEvent(events, until: deadline, what: what) } catch { throw cleanup(error) }
    guard let event else { throw cleanup(KernelError("rdma_get_cm_event", .timedOut, detail: "\(what): no event within \(deadline.allowedDescription)")) }
    guard event.type == type else {
        throw cleanup(KernelError("rdma_get_cm_event", .connectionAbort, detail: "\(what): \(event.name) (status \(event.status))"))
    }
}

/// A new event channel and an RDMA CM identifier on it (`rdma_create_event_channel`,
/// `rdma_create_id`, reliable-connected port space); the caller destroys both.
func newIdentifier() throws(KernelError) -> (UnsafeMutablePointer<rdma_event_channel>, UnsafeMutablePointer<rdma_cm_id>) {
    guard let events = rdma_create_event_channel() else { throw verbsError("rdma_create_event_channel") }
    var rawID: UnsafeMutablePointer<rdma_cm_id>? = nil
    guard rdma_create_id(events, &rawID, nil, RDMA_PS_TCP) == 0, let id = rawID else {
        let error = verbsError("rdma_create_id")
        rdma_destroy_event_channel(events)
        throw error
    }
    return (events, id)
}

/// The device's limits (`ibv_query_device`), nil if the query fails.
func deviceAttributes(_ context: UnsafeMutablePointer<ibv_context>) -> ibv_device_attr? {
    var attributes = ibv_device_attr()
    return ibv_query_device(context, &attributes) == 0 ? attributes : nil
}

/// Listens for queue pairs (`rdma_bind_addr`, `rdma_listen`) on an IPv4 address.
public final class RDMAListener: @unchecked Sendable {
    let events: UnsafeMutablePointer<rdma_event_channel>
    let id: UnsafeMutablePointer<rdma_cm_id>

    public init(address: String, port: UInt16 = 0, backlog: Int32 = 16) throws(KernelError) {
        let (events, id) = try newIdentifier()
        let bound = pager_rdma_bind_ipv4(id, address, port)
        if bound != 0 || rdma_listen(id, backlog) != 0 {
            let error = bound != 0 ? KernelError("rdma_bind_addr", Errno(rawValue: -bound), detail: "\(address):\(port)")
                                   : verbsError("rdma_listen", detail: "\(address):\(port)")
            rdma_destroy_id(id)
            rdma_destroy_event_channel(events)
            throw error
        }
        self.events = events
        self.id = id
    }

    deinit {
        rdma_destroy_id(id)
        rdma_destroy_event_channel(events)
    }

    /// The port bound (`rdma_get_src_port`).
    public var port: UInt16 { UInt16(bigEndian: rdma_get_src_port(id)) }

    /// Readable when a connection request is waiting.
    public var eventDescriptor: FileDescriptor { FileDescriptor(rawValue: events.pointee.fd) }

    /// The next connection request until `deadline` (nil: none came). Throws ENODEV when the
    /// listener's device was removed (the listener is dead: listen again once it is back);
    /// other events on the listener (none are expected) are skipped.
    public func nextRequest(until deadline: Deadline) throws(KernelError) -> ConnectionRequest? {
        while let event = try nextCMEvent(events, until: deadline, what: "connection requests") {
            if event.type == RDMA_CM_EVENT_DEVICE_REMOVAL {
                throw KernelError("rdma_get_cm_event", .noSuchAddressOrDevice, detail: "the listener's RDMA device was removed")
            }
            guard event.type == RDMA_CM_EVENT_CONNECT_REQUEST, let requestID = event.id else { continue }
            return ConnectionRequest(id: requestID, event: event)
        }
        return nil
    }
}

/// A connection request not answered yet: admit it (`accept`) or refuse it (`reject`); one that
/// is dropped unanswered is refused.
public final class ConnectionRequest: @unchecked Sendable {
    let id: UnsafeMutablePointer<rdma_cm_id>
    /// The admission request it carries.
    public let privateData: [UInt8]
    /// READs the peer wants to have outstanding at this side. RDMA CM reports a request's
    /// depths from this side's point of view: its `responder_resources` is the peer's
    /// initiator depth.
    let readsWanted: UInt8
    private var answered = false

    init(id: UnsafeMutablePointer<rdma_cm_id>, event: CMEvent) {
        self.id = id
        privateData = event.privateData
        readsWanted = event.responderResources
    }

    deinit {
        if !answered { reject("the source dropped the request") }
    }

    /// The device the request came in on, to create the session's protection domain on.
    public var context: UnsafeMutablePointer<ibv_context>? { id.pointee.verbs }

    /// Refuses the queue pair; `reason` reaches the peer as the reject's private data (at most
    /// 120 bytes of it, RDMA CM's limit for a reject is 148).
    public func reject(_ reason: String) {
        guard !answered else { return }
        answered = true
        let bytes = Array(reason.utf8.prefix(120))
        bytes.withUnsafeBytes { _ = rdma_reject(id, $0.baseAddress, UInt8($0.count)) }
        rdma_destroy_id(id)
    }

    /// Accepts the queue pair into `domain` (`rdma_accept`) on its own event channel, and waits
    /// until it is established or `deadline` passes.
    public func accept(domain: ProtectionDomain, settings: QueueSettings = QueueSettings(), until deadline: Deadline) throws(KernelError) -> RDMAConnection {
        precondition(!answered, "a connection request answered twice")
        answered = true
        guard let events = rdma_create_event_channel() else {
            let error = verbsError("rdma_create_event_channel")
            rdma_destroy_id(id)
            throw error
        }
        if rdma_migrate_id(id, events) != 0 {
            let error = verbsError("rdma_migrate_id")
            rdma_destroy_id(id)
            rdma_destroy_event_channel(events)
            throw error
        }
        let connection = try RDMAConnection(events: events, id: id, domain: domain, settings: settings, peerPrivateData: privateData)
        var parameters = rdma_conn_param()
        let limit = id.pointee.verbs.flatMap { deviceAttributes($0) }.map { Int($0.max_qp_rd_atom) } ?? 1
        parameters.responder_resources = UInt8(clamping: min(Int(readsWanted), limit))
        parameters.initiator_depth = 0
        parameters.rnr_retry_count = 7
        if rdma_accept(id, &parameters) != 0 { throw verbsError("rdma_accept") }
        guard let event = try nextCMEvent(events, until: deadline, what: "accepting a queue pair") else {
            throw KernelError("rdma_accept", .timedOut, detail: "not established within \(deadline.allowedDescription)")
        }
        guard event.type == RDMA_CM_EVENT_ESTABLISHED else {
            throw KernelError("rdma_accept", .connectionAbort, detail: "\(event.name) (status \(event.status))")
        }
        connection.markConnected()
        return connection
    }
}
#endif
