#if RDMA
import Logging
import PagerDestination
import PagerKernel
import PagerRDMA
import PagerWire
import Synchronization

/// The destination's reads over RDMA (``PageReads``): one reliable-connected queue pair to the
/// source, admitted with the session's admission key, READs into staging pools of 4 KiB and
/// 2 MiB slots registered in its domain. A failed or flushed READ, or a lost queue pair, puts
/// its requests back for TCP; from the first failure on every request goes over TCP.
///
/// The demand channel's reads take what they can post now (a fault must not wait for a slot:
/// the rest goes over TCP at once). The push channel's (PUSH_READ, §4.11a) take every range
/// they hold a key for, post what the slots allow and queue the rest, posting it in order as
/// completions free slots.
///
/// A queue pair that fails or goes is connected again (a new admission request, a new nonce;
/// see ``reconnect()``): meanwhile every request goes over TCP.
public final class RDMAPageReads: PageReads, @unchecked Sendable {
    struct State {
        var reader: RDMAReader?
        /// The keys granted since the current queue pair's connection began (a new queue pair
        /// reads with these only: the source sends them after each admission).
        var keys = RemoteKeys()
        /// Counts of the queue pairs before the current one.
        var readsBefore = 0
        var bytesBefore = 0
        /// What each READ in flight serves.
        var waiting: [ReadTarget: [PageRequest]] = [:]
        var stopped = false
        /// The queue pair failed or went: nothing more is taken.
        var dead = false
        /// Push ranges taken, not yet posted (no free slot), in order.
        var backlog = PushBacklog<PageRequest, ReadTarget>(key: RDMAPageReads.target)
    }
    let state = Mutex(State())
    /// ``stop()`` said, for waits (the backoff, the wait after giving up).
    let stopSignal = WaitableState(false)
    /// The queue pair and the pools' registrations in its domain: the reads thread's (and
    /// deinit's) only.
    var connection: RDMAConnection?
    var registrations: [MemoryRegion] = []
    private let small: UnsafeMutableRawBufferPointer
    private let huge: UnsafeMutableRawBufferPointer
    let logger: Logger
    /// Queue what cannot be posted yet (the push channel) rather than hand it back.
    private let queueing: Bool
    /// What a new queue pair is connected with.
    let peer: Peer
    /// Where new queue pairs go, and under what.
    struct Peer {
        let address: String
        let port: UInt16
        let session: UInt64
        let admissionKey: [UInt8]
        /// The RDMA device they must be on (nil: whichever the route picks).
        let device: String?
    }
    let channel: AdmissionRequest.Channel
    /// Reconnects in a row whose queue pair went before its first READ completed (the reads
    /// thread's only).
    var fruitless = 0

    /// 4 KiB and 2 MiB slots per channel: faults and their neighbours (2 MiB), the push's
    /// 512 KiB ranges sixteen at a time (8 MiB).
    static func slots(_ channel: AdmissionRequest.Channel) -> (small: Int, huge: Int) {
        channel == .demand ? (512, 4) : (2048, 4)
    }
    /// How long the reads thread polls for a completion before it sleeps on the channel.
    static let spinNanoseconds: UInt64 = 20_000

    /// Connects the demand (or with `push` the push) queue pair of `session` to the source at
    /// `address:port` (its RDMA CM listener, spec §4.15) with the admission request made under
    /// `admissionKey`, and registers the staging pools.
    /// With `device`, a queue pair the route puts on another RDMA device is refused.
    public init(address: String, port: UInt16, session: UInt64, admissionKey: [UInt8], push: Bool = false, device: String? = nil,
                logger: Logger, timeoutMilliseconds: Int = 10_000) throws(KernelError) {
        self.logger = logger
        queueing = push
        let channel: AdmissionRequest.Channel = push ? .push : .demand
        self.channel = channel
        peer = Peer(address: address, port: port, session: session, admissionKey: admissionKey, device: device)
        let connection = try Self.connect(peer, channel, timeoutMilliseconds: timeoutMilliseconds)
        let slots = Self.slots(channel)
        small = .allocate(byteCount: slots.small * basePageSize, alignment: basePageSize)
        huge = .allocate(byteCount: slots.huge * hugePageSize, alignment: hugePageSize)
        // Every stored property is set from here: a throw below runs deinit, which frees the
        // pools (after whatever registration was made).
        let (reader, registrations) = try stage(on: connection)
        self.registrations = registrations
        state.withLock { $0.reader = reader }
        self.connection = connection
    }

    /// A queue pair of `channel`, admitted under a fresh admission request (a new nonce).
    /// Refused (ENODEV) when the route puts it on another device than `peer.device`.
    static func connect(_ peer: Peer, _ channel: AdmissionRequest.Channel, timeoutMilliseconds: Int) throws(KernelError) -> RDMAConnection {
        let request = AdmissionRequest(channel: channel, session: peer.session, key: peer.admissionKey)
        let connection = try RDMAConnection.connect(to: peer.address, port: peer.port, privateData: request.bytes,
                                                    until: .after(nanoseconds: UInt64(timeoutMilliseconds) * 1_000_000))
        if let wanted = peer.device, connection.deviceName != wanted {
            throw KernelError("rdma_resolve_route", .noSuchAddressOrDevice,
                              detail: "\(peer.address) is reached through RDMA device \(connection.deviceName), not \(wanted) (--rdma-device)")
        }
        return connection
    }

    /// The staging pools registered in `connection`'s domain, and a reader over its queue.
    func stage(on connection: RDMAConnection) throws(KernelError) -> (RDMAReader, [MemoryRegion]) {
        let slots = Self.slots(channel)
        let smallRegion = try connection.domain.register(small.baseAddress!, length: small.count, access: .localWrite)
        let hugeRegion = try connection.domain.register(huge.baseAddress!, length: huge.count, access: .localWrite)
        let reader = RDMAReader(queue: connection.queue, pools: [
            StagingMemory(base: small.baseAddress!, slotSize: basePageSize, count: slots.small, lkey: smallRegion.lkey),
            StagingMemory(base: huge.baseAddress!, slotSize: hugePageSize, count: slots.huge, lkey: hugeRegion.lkey),
        ], maximumPending: connection.settings.sendDepth)
        return (reader, [smallRegion, hugeRegion])
    }

    deinit {
        // The registrations, then the queue pair and its domain (see RDMAConnection's deinit),
        // then the memory (nothing can land in it once its registrations are gone).
        state.withLock { $0.reader = nil }
        registrations.removeAll()
        connection = nil
        small.deallocate()
        huge.deallocate()
    }

    public var readsCompleted: Int { state.withLock { $0.readsBefore + ($0.reader?.readsCompleted ?? 0) } }
    public var bytesRead: Int { state.withLock { $0.bytesBefore + ($0.reader?.bytesRead ?? 0) } }

    public func take(_ requests: [PageRequest]) -> [PageRequest] {
        state.withLock { state in
            guard !state.stopped, !state.dead, let reader = state.reader else { return requests }
            guard queueing else { return Self.post(requests, &state, reader) }
            // A range without a key could never be read: handed back (TCP). One read or queued
            // already (the push sent again after a resume) is not read twice.
            var unreadable: [PageRequest] = []
            for r in requests where state.waiting[Self.target(r)] == nil {
                if reader.keys.remote(for: Self.target(r)) == nil { unreadable.append(r) } else { state.backlog.append(r) }
            }
            return unreadable + postBacklog(&state)
        }
    }

    static func target(_ r: PageRequest) -> ReadTarget { ReadTarget(region: r.region, offset: r.offset, length: Int(r.length)) }

    /// Posts what it can of `requests` (one chain); returns the rest, in order.
    private static func post(_ requests: [PageRequest], _ state: inout State, _ reader: RDMAReader) -> [PageRequest] {
        let targets = requests.map(target)
        let notPosted = Set(reader.read(targets))
        var rest: [PageRequest] = []
        for (request, target) in zip(requests, targets) {
            if notPosted.contains(target) { rest.append(request) } else { state.waiting[target, default: []].append(request) }
        }
        return rest
    }

    /// Posts the push backlog from its front, a chain at a time, until a range does not fit.
    /// Returns what can never be posted (it did not fit with nothing in flight: a key shorter
    /// than the range, a queue refusing posts): for TCP.
    private func postBacklog(_ state: inout State) -> [PageRequest] {
        guard let reader = state.reader else { return [] }
        while !state.backlog.isEmpty, !state.dead {
            let rest = Self.post(state.backlog.takeFront(VerbsQueue.maximumChain), &state, reader)
            if reader.state != .live { state.dead = true }
            if rest.isEmpty { continue }
            if reader.pending == 0 { return rest + state.backlog.removeAll() }
            state.backlog.putBack(rest)
            return []
        }
        return []
    }

    public func grant(region: UInt32, rkey: UInt32, address: UInt64, length: UInt64, regionLength: UInt64?) throws {
        try state.withLock { (state) throws(RemoteKeyError) in
            let grant = RemoteKeys.Grant(region: region, rkey: rkey, address: address, length: length)
            try state.keys.record(grant, regionLength: regionLength)
            try state.reader?.keys.record(grant, regionLength: regionLength)
        }
        logger.info("RDMA: the source granted READ of region \(region) (\(length >> 20) MiB)")
    }

    public func stop() {
        state.withLock { $0.stopped = true }
        stopSignal.change { $0 = true }
    }

    public func serve(arrived: (PageRequest, UnsafeRawBufferPointer) -> Void, failed: ([PageRequest]) -> Void) {
        // The queue pair is taken in a call of its own: no reference to it outlives the call
        // (reconnect() must be able to let it go).
        func serveCurrent() -> Bool {
            guard let current = connection else { return false }
            serveQueuePair(current, arrived: arrived, failed: failed)
            return true
        }
        while serveCurrent() {
            guard reconnect() else {
                waitUntilStopped()
                return
            }
        }
    }

    /// Until the reads are stopped, or the queue pair failed or went (what was in flight is
    /// then handed to `failed`).
    private func serveQueuePair(_ connection: RDMAConnection, arrived: (PageRequest, UnsafeRawBufferPointer) -> Void,
                                failed: ([PageRequest]) -> Void) {
        while true {
            // What completed (polled under the lock, handled outside it: installing takes the
            // resolver's lock, and the fault loop takes this one to post).
            let (events, stopped, dead) = poll(arm: false)
            if stopped { return }
            handle(events, arrived: arrived, failed: failed)
            if dead {
                abandonAll("the queue pair failed", failed)
                return
            }
            if !events.isEmpty { continue }
            // Nothing completed: poll a little longer (a READ on a NIC completes in
            // microseconds, sooner than a wake-up), then arm the completion channel and look
            // once more (a completion may have come before the arming), then sleep on it and on
            // the connection's events.
            let spinEnd = monotonicNanoseconds() + Self.spinNanoseconds
            var spun: [ReadEvent] = []
            while spun.isEmpty, state.withLock({ $0.reader?.pending ?? 0 }) > 0, monotonicNanoseconds() < spinEnd {
                spun = poll(arm: false).events
            }
            if !spun.isEmpty {
                handle(spun, arrived: arrived, failed: failed)
                continue
            }
            let (late, _, _) = poll(arm: true)
            if !late.isEmpty {
                handle(late, arrived: arrived, failed: failed)
                continue
            }
            let ready: [Bool]
            do {
                ready = try pollReadable([connection.completionDescriptor, connection.eventDescriptor], timeoutMilliseconds: 50,
                                         detail: "RDMA completions")
            } catch {
                logger.error("RDMA: \(error): what is in flight is asked for over TCP, and so is everything until a new queue pair is in")
                abandonAll("the completion channel failed", failed)
                return
            }
            if ready[0] { try? connection.acknowledgeCompletionEvent() }
            if ready[1], let event = try? connection.nextEvent(until: .after(nanoseconds: 1_000_000)) {
                logger.warning("RDMA: \(event) on the queue pair: what is in flight is asked for over TCP, and so is everything until a new queue pair is in")
                abandonAll("the queue pair went (\(event))", failed)
                return
            }
        }
    }

    /// Completions taken under the lock (after arming the channel when `arm`), and whether
    /// the reads were stopped or the queue pair is unusable.
    private func poll(arm: Bool) -> (events: [ReadEvent], stopped: Bool, dead: Bool) {
        state.withLock { state in
            var events: [ReadEvent] = []
            if !state.stopped, !state.dead, let reader = state.reader {
                do {
                    if arm { try reader.queue.requestNotification() }
                    _ = try reader.poll { events.append($0) }
                } catch {
                    state.dead = true
                }
                if reader.state != .live { state.dead = true }
            }
            return (events, state.stopped, state.dead)
        }
    }

    private func handle(_ events: [ReadEvent], arrived: (PageRequest, UnsafeRawBufferPointer) -> Void, failed: ([PageRequest]) -> Void) {
        for event in events {
            switch event {
            case .arrived(let target, let pool, let slots, let bytes):
                let requests = state.withLock { $0.waiting.removeValue(forKey: target) } ?? []
                for request in requests { arrived(request, bytes) }
                let stuck = state.withLock { state -> [PageRequest] in
                    state.reader?.release(pool: pool, slots: slots)
                    return queueing ? postBacklog(&state) : []
                }
                if !stuck.isEmpty { failed(stuck) }
            case .failed(let target, let status):
                logger.warning("RDMA: READ of \(target) \(status): asked for over TCP")
                failed(state.withLock { $0.waiting.removeValue(forKey: target) } ?? [])
            }
        }
    }

    func waitUntilStopped() {
        _ = stopSignal.wait(until: { $0 })
    }

    /// The queue pair is unusable: everything in flight goes back to TCP, and so does every
    /// request from now on.
    private func abandonAll(_ reason: String, _ failed: ([PageRequest]) -> Void) {
        let requests = state.withLock { state -> [PageRequest] in
            state.dead = true
            _ = state.reader?.abandon(reason: reason)
            defer { state.waiting.removeAll() }
            return state.waiting.values.flatMap { $0 } + state.backlog.removeAll()
        }
        if !requests.isEmpty { failed(requests) }
    }
}
#endif
