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
public final class RDMAPageReads: PageReads, @unchecked Sendable {
    private struct State {
        var reader: RDMAReader?
        /// What each READ in flight serves.
        var waiting: [ReadTarget: [PageRequest]] = [:]
        var stopped = false
        /// The queue pair failed or went: nothing more is taken.
        var dead = false
        /// Push ranges taken, not yet posted (no free slot), in order.
        var backlog: [PageRequest] = []
    }
    private let state = Mutex(State())
    private var connection: RDMAConnection?
    private var registrations: [MemoryRegion] = []
    private let small: UnsafeMutableRawBufferPointer
    private let huge: UnsafeMutableRawBufferPointer
    private let logger: Logger
    /// Queue what cannot be posted yet (the push channel) rather than hand it back.
    private let queueing: Bool

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
    public init(address: String, port: UInt16, session: UInt64, admissionKey: [UInt8], push: Bool = false,
                logger: Logger, timeoutMilliseconds: Int = 10_000) throws(KernelError) {
        self.logger = logger
        queueing = push
        let channel: AdmissionRequest.Channel = push ? .push : .demand
        let request = AdmissionRequest(channel: channel, session: session, key: admissionKey)
        let connection = try RDMAConnection.connect(to: address, port: port, privateData: request.bytes,
                                                    until: .after(nanoseconds: UInt64(timeoutMilliseconds) * 1_000_000))
        let slots = Self.slots(channel)
        small = .allocate(byteCount: slots.small * basePageSize, alignment: basePageSize)
        huge = .allocate(byteCount: slots.huge * hugePageSize, alignment: hugePageSize)
        // Every stored property is set from here: a throw below runs deinit, which frees the
        // pools (after whatever registration was made).
        let smallRegion = try connection.domain.register(small.baseAddress!, length: small.count, access: .localWrite)
        registrations = [smallRegion]
        let hugeRegion = try connection.domain.register(huge.baseAddress!, length: huge.count, access: .localWrite)
        registrations.append(hugeRegion)
        let reader = RDMAReader(queue: connection.queue, pools: [
            StagingMemory(base: small.baseAddress!, slotSize: basePageSize, count: slots.small, lkey: smallRegion.lkey),
            StagingMemory(base: huge.baseAddress!, slotSize: hugePageSize, count: slots.huge, lkey: hugeRegion.lkey),
        ], maximumPending: connection.settings.sendDepth)
        state.withLock { $0.reader = reader }
        self.connection = connection
    }

    deinit {
        // The queue pair first (nothing may land in the pools after), then the registrations,
        // then the memory.
        state.withLock { $0.reader = nil }
        connection = nil
        registrations.removeAll()
        small.deallocate()
        huge.deallocate()
    }

    public var readsCompleted: Int { state.withLock { $0.reader?.readsCompleted ?? 0 } }
    public var bytesRead: Int { state.withLock { $0.reader?.bytesRead ?? 0 } }

    public func take(_ requests: [PageRequest]) -> [PageRequest] {
        state.withLock { state in
            guard !state.stopped, !state.dead, let reader = state.reader else { return requests }
            guard queueing else { return Self.post(requests, &state, reader) }
            // A range without a key could never be read: handed back (TCP).
            var unreadable: [PageRequest] = []
            for r in requests {
                if reader.keys.remote(for: Self.target(r)) == nil { unreadable.append(r) } else { state.backlog.append(r) }
            }
            postBacklog(&state)
            return unreadable
        }
    }

    private static func target(_ r: PageRequest) -> ReadTarget { ReadTarget(region: r.region, offset: r.offset, length: Int(r.length)) }

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
    private func postBacklog(_ state: inout State) {
        guard let reader = state.reader else { return }
        while !state.backlog.isEmpty, !state.dead {
            let chain = Array(state.backlog.prefix(VerbsQueue.maximumChain))
            let rest = Self.post(chain, &state, reader)
            state.backlog.removeFirst(chain.count)
            state.backlog.insert(contentsOf: rest, at: 0)
            if reader.state != .live { state.dead = true }
            if !rest.isEmpty { return }
        }
    }

    public func grant(region: UInt32, rkey: UInt32, address: UInt64, length: UInt64, regionLength: UInt64?) throws {
        try state.withLock { (state) throws(RemoteKeyError) in
            try state.reader?.keys.record(.init(region: region, rkey: rkey, address: address, length: length), regionLength: regionLength)
        }
        logger.info("RDMA: the source granted READ of region \(region) (\(length >> 20) MiB)")
    }

    public func stop() { state.withLock { $0.stopped = true } }

    public func serve(arrived: (PageRequest, UnsafeRawBufferPointer) -> Void, failed: ([PageRequest]) -> Void) {
        guard let connection else { return }
        while true {
            // What completed (polled under the lock, handled outside it: installing takes the
            // resolver's lock, and the fault loop takes this one to post).
            let (events, stopped, dead) = poll(arm: false)
            if stopped { return }
            handle(events, arrived: arrived, failed: failed)
            if dead {
                abandonAll("the queue pair failed", failed)
                waitUntilStopped()
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
                logger.error("RDMA: \(error): what is in flight is asked for over TCP, and so is everything from now on")
                abandonAll("the completion channel failed", failed)
                waitUntilStopped()
                return
            }
            if ready[0] { try? connection.acknowledgeCompletionEvent() }
            if ready[1], let event = try? connection.nextEvent(until: .after(nanoseconds: 1_000_000)) {
                logger.warning("RDMA: \(event) on the queue pair: what is in flight is asked for over TCP, and so is everything from now on")
                abandonAll("the queue pair went (\(event))", failed)
                waitUntilStopped()
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
                state.withLock { state in
                    state.reader?.release(pool: pool, slots: slots)
                    if queueing { postBacklog(&state) }
                }
            case .failed(let target, let status):
                logger.warning("RDMA: READ of \(target) \(status): asked for over TCP")
                failed(state.withLock { $0.waiting.removeValue(forKey: target) } ?? [])
            }
        }
    }

    private func waitUntilStopped() {
        while !state.withLock({ $0.stopped }) { sleepMilliseconds(20) }
    }

    /// The queue pair is unusable: everything in flight goes back to TCP, and so does every
    /// request from now on.
    private func abandonAll(_ reason: String, _ failed: ([PageRequest]) -> Void) {
        let requests = state.withLock { state -> [PageRequest] in
            state.dead = true
            _ = state.reader?.abandon(reason: reason)
            defer {
                state.waiting.removeAll()
                state.backlog.removeAll()
            }
            return state.waiting.values.flatMap { $0 } + state.backlog
        }
        if !requests.isEmpty { failed(requests) }
    }
}
#endif
