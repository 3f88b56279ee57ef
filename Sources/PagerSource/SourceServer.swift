import Logging
import PagerKernel
import PagerTransport
import PagerWire
import Dispatch
import PagerCore
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
public final class SourceServer: @unchecked Sendable {
    public let regions: [ServedRegion]
    public let listener: TCPListener
    private let logger: Logger
    private let sessions = ForegroundMutex<[UInt64: SourceSession]>([:])
    private let stopping = Atomic<Bool>(false)
    /// While held, no PAGE_DATA leaves the server (sessions may connect and ask): a VM's RAM
    /// must not be served before the VM has stopped writing it.
    private let held = Atomic<Bool>(false)
    private let releasedSignal = DispatchSemaphore(value: 0)
    private let active = Atomic<Int>(0)
    private let counters = ForegroundMutex(Counters())

    /// Totals over all sessions, for the summary.
    public struct Counters: Sendable {
        public var sessions = 0
        public var demandRequests = 0
        public var prefetchRequests = 0
        public var bytesSent: UInt64 = 0
        public var zeroBytes: UInt64 = 0
        public var failedSessions = 0
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

    /// A connection that has not completed its HELLO within this time is closed.
    public var handshakeTimeoutMilliseconds = 10_000

    public init(listen: Endpoint, regions: [ServedRegion], logger: Logger) throws(KernelError) {
        self.regions = regions
        self.logger = logger
        listener = try TCPListener(listen)
    }

    public var counts: Counters { counters.withLock { $0 } }

    /// Sessions being served now.
    public var activeSessions: Int { active.load(ordering: .relaxed) }

    /// Withholds page data until ``release()`` (see `held`).
    public func hold() { held.store(true, ordering: .releasing) }

    /// Lets page data flow (the writer of the memory has stopped).
    public func release() {
        held.store(false, ordering: .releasing)
        releasedSignal.signal()
    }

    /// Blocks a sender while the server is held; false if the session closed meanwhile.
    private func waitUntilReleased(_ session: SourceSession) -> Bool {
        while held.load(ordering: .acquiring) {
            if session.isClosed || stopping.load(ordering: .acquiring) { return false }
            if releasedSignal.wait(timeout: .now() + .milliseconds(10)) == .success { releasedSignal.signal() }
        }
        return true
    }

    /// Accepts connections until ``stop()``, each served on its own thread.
    public func run() {
        logger.info("serving \(regions.count) region(s) on \(listener.endpoint): \(regions.map { "\($0.id)=\($0.name) (\($0.length >> 20) MiB, \($0.pageSize >> 10) KiB pages)" }.joined(separator: ", "))")
        while !stopping.load(ordering: .acquiring) {
            let socket: TCPSocket
            do { socket = try listener.accept() } catch {
                if stopping.load(ordering: .acquiring) { break }
                logger.error("accept failed: \(error)")
                continue
            }
            do {
                _ = try KernelThread(name: "src-conn") { [self] in serve(FrameChannel(socket)) }
            } catch {
                logger.error("cannot start a thread for \(socket.peer): \(error)")
            }
        }
    }

    public func stop() {
        stopping.store(true, ordering: .releasing)
        listener.shutdown()
        for session in sessions.withLock({ Array($0.values) }) { session.close() }
    }

    // MARK: Connections

    private func serve(_ channel: FrameChannel) {
        var joined: SourceSession?
        channel.socket.setBufferSizes(4 << 20)
        // A peer that connects and says nothing must not hold a thread forever.
        channel.socket.setReceiveTimeout(milliseconds: handshakeTimeoutMilliseconds)
        do {
            guard case .message(.hello(let hello)) = try channel.receive() else {
                throw SessionError.refuse(.unexpectedMessage, "the first frame must be HELLO")
            }
            guard hello.minVersion <= ProtocolVersion.v1, hello.maxVersion >= ProtocolVersion.v1 else {
                throw SessionError.refuse(.unsupportedVersion,
                    "server speaks versions \(ProtocolVersion.supported.lowerBound)-\(ProtocolVersion.supported.upperBound), client offered \(hello.minVersion)-\(hello.maxVersion)")
            }
            channel.sendLimit = hello.maxPayload
            channel.socket.setReceiveTimeout(milliseconds: 0)
            let features = hello.features.intersection([.checksums, .resume, .hugePages, .invalidation])
            if hello.resumeSession == 0 {
                if let live = regions.first(where: { $0.live != nil }) {
                    guard features.contains(.invalidation) else {
                        throw SessionError.refuse(.unexpectedMessage,
                            "region \(live.id) is live (pre-copy rounds): the destination must offer the invalidation feature (pagerd dest --precopy)")
                    }
                    guard !live.live!.claim() else {
                        throw SessionError.refuse(.unexpectedMessage, "region \(live.id) is live and already migrating to another destination")
                    }
                }
                let session = SourceSession(features: features, peer: channel.peer)
                joined = session
                active.add(1, ordering: .relaxed)
                defer { active.subtract(1, ordering: .relaxed) }
                sessions.withLock { $0[session.id] = session }
                counters.withLock { $0.sessions += 1 }
                defer { sessions.withLock { _ = $0.removeValue(forKey: session.id) } }
                try welcome(channel, session: session)
                logger.info("session \(hex(session.id)) from \(channel.peer) (\(hello.clientName)): demand channel open")
                try serveDemand(channel, session: session)
                logger.info("session \(hex(session.id)) ended cleanly")
            } else {
                guard let session = sessions.withLock({ $0[hello.resumeSession] }), session.token == hello.resumeToken else {
                    throw SessionError.refuse(.unexpectedMessage, "no session \(hex(hello.resumeSession)) with that token")
                }
                joined = session
                try welcome(channel, session: session)
                logger.info("session \(hex(session.id)): push channel open from \(channel.peer)")
                try servePush(channel, session: session)
            }
        } catch let SessionError.refuse(code, message) {
            logger.warning("\(channel.peer): \(code): \(message)")
            counters.withLock { $0.failedSessions += 1 }
            try? channel.send(.error(ProtocolError(code: code, message: message)))
        } catch where joined?.saidGoodbye == true {
            // The destination said GOODBYE: whatever breaks while the connections close is expected.
        } catch let error as ChannelError {
            switch error {
            case .closed: logger.info("\(channel.peer) disconnected")
            case .malformed(_, let wire):
                logger.warning("session with \(channel.peer) ended: \(error)")
                counters.withLock { $0.failedSessions += 1 }
                try? channel.send(.error(ProtocolError(code: .malformedFrame, message: wire.description)))
            default:
                logger.warning("session with \(channel.peer) ended: \(error)")
                counters.withLock { $0.failedSessions += 1 }
            }
        } catch {
            logger.warning("session with \(channel.peer) ended: \(error)")
            counters.withLock { $0.failedSessions += 1 }
        }
        channel.socket.shutdown()
    }

    private func welcome(_ channel: FrameChannel, session: SourceSession) throws(ChannelError) {
        try channel.send(.welcome(Welcome(features: session.features, regionCount: UInt32(regions.count),
                                          session: session.id, resumeToken: session.token)))
        for region in regions { try channel.send(.region(region.descriptor)) }
    }

    /// The demand loop: every request is answered before the next is read.
    private func serveDemand(_ channel: FrameChannel, session: SourceSession) throws {
        if urgentDemand { makeCurrentThreadUrgent() }
        session.attachDemand(channel)
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: Self.maxChunk, alignment: 4096)
        defer { scratch.deallocate() }
        while true {
            guard case .message(let message) = try channel.receive() else {
                throw SessionError.refuse(.unexpectedMessage, "destinations do not send PAGE_DATA")
            }
            switch message {
            case .pageRequest(let request):
                counters.withLock {
                    if request.flags.contains(.urgent) { $0.demandRequests += 1 } else { $0.prefetchRequests += 1 }
                }
                try answer(request, on: channel, session: session, flags: request.flags.contains(.urgent) ? .urgent : [], scratch: scratch)
            case .complete(let region, let resident):
                // Nothing more is needed from the region(s): the push skips them from now on.
                for r in regions where region == Message.allRegions || r.id == region { session.markAllSent(r) }
                logger.info("session \(hex(session.id)): destination holds all of region \(region == Message.allRegions ? "all" : "\(region)") (\(resident >> 20) MiB)")
                try channel.send(.completeAck(region: region))
            case .ping(let token, let timestamp):
                try channel.send(.pong(token: token, timestamp: timestamp))
            case .goodbye:
                session.goodbye()
                return
            default:
                throw SessionError.refuse(.unexpectedMessage, "\(message.type) is not expected on the demand channel")
            }
        }
    }

    /// Sends a request's pages, or an ERROR for that request (the session goes on).
    private func answer(_ request: PageRequest, on channel: FrameChannel, session: SourceSession, flags: PageDataHeader.Flags,
                        scratch: UnsafeMutableRawPointer) throws {
        guard let region = regions.first(where: { $0.id == request.region }) else {
            try channel.send(.error(ProtocolError(code: .unknownRegion, requestID: request.requestID,
                message: "region \(request.region) is not served (served: \(regions.map { "\($0.id)" }.joined(separator: ", ")))")))
            return
        }
        if let problem = region.check(offset: request.offset, length: request.length) {
            var e = problem
            e.requestID = request.requestID
            try channel.send(.error(e))
            return
        }
        guard waitUntilReleased(session) else { throw ChannelError.closed(peer: channel.peer) }
        session.markSent(region, offset: request.offset, length: request.length)
        _ = try send(region, offset: request.offset, length: request.length, requestID: request.requestID,
                     flags: flags, on: channel, session: session, chunk: max(region.pageSize, Int(channel.sendLimit) - 64 << 10), scratch: scratch)
    }

    /// The largest data frame sent: the scratch buffer for another process's memory holds one.
    static let maxChunk = 4 << 20

    /// Sends `[offset, offset+length)` of `region` as PAGE_DATA frames: holes and zero pages
    /// as ZERO frames, data in frames of at most `chunk` bytes (whole pages). Returns the bytes
    /// sent as data.
    private func send(_ region: ServedRegion, offset: UInt64, length: UInt64, requestID: UInt32, flags: PageDataHeader.Flags,
                      on channel: FrameChannel, session: SourceSession, chunk: Int, scratch: UnsafeMutableRawPointer) throws -> UInt64 {
        let step = UInt64(max(region.pageSize, min(chunk, Self.maxChunk) / region.pageSize * region.pageSize))
        var sent: UInt64 = 0, zero: UInt64 = 0
        func sendZero(_ range: Range<UInt64>) throws(ChannelError) {
            try channel.sendPageData(PageDataHeader(requestID: requestID, region: region.id, offset: range.lowerBound,
                                                    length: range.upperBound - range.lowerBound, flags: flags, encoding: .zero), data: nil)
            zero += range.upperBound - range.lowerBound
        }
        for run in region.extentRuns(offset: offset, length: length) {
            if run.hole {
                try sendZero(run.range)
                continue
            }
            var at = run.range.lowerBound
            while at < run.range.upperBound {
                let n = min(step, run.range.upperBound - at)
                let bytes: UnsafeRawBufferPointer
                do { bytes = try region.bytes(offset: at, length: n, scratch: scratch) } catch {
                    throw SessionError.refuse(.ioError, "cannot read region \(region.id) at \(hex(at))+\(hex(n)): \(error)")
                }
                for piece in zeroRuns(bytes, pageSize: region.pageSize) {
                    let pieceOffset = at + UInt64(piece.range.lowerBound)
                    if piece.zero {
                        try sendZero(pieceOffset..<pieceOffset + UInt64(piece.range.count))
                        continue
                    }
                    let data = UnsafeRawBufferPointer(rebasing: bytes[piece.range])
                    let sums: [UInt32]? = session.features.contains(.checksums)
                        ? stride(from: 0, to: data.count, by: 4096).map { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: data[$0..<$0 + 4096])) }
                        : nil
                    try channel.sendPageData(PageDataHeader(requestID: requestID, region: region.id, offset: pieceOffset, length: UInt64(data.count),
                                                            flags: flags, encoding: .raw), checksums: sums, data: data)
                    sent += UInt64(data.count)
                }
                at += n
            }
        }
        counters.withLock {
            $0.bytesSent += sent
            $0.zeroBytes += zero
        }
        return sent
    }

    /// The push loop: serve queued prefetch requests first, then the next pages not yet sent,
    /// in order from the cursor. A live region's pages go in pre-copy rounds first (see
    /// ``LiveRegion``); its PUSH_COMPLETE comes only after the switch.
    private func servePush(_ channel: FrameChannel, session: SourceSession) throws {
        let reader = try KernelThread(name: "src-push-rd") { [self] in
            // Requests on the push channel are prefetch hints; anything else ends the channel.
            while true {
                do {
                    guard case .message(let m) = try channel.receive() else { break }
                    switch m {
                    case .pageRequest(let r):
                        counters.withLock { $0.prefetchRequests += 1 }
                        session.enqueue(r)
                    case .invalidateAck(let sequence, _):
                        session.acknowledge(sequence)
                    case .pong(let token, _):
                        session.ponged(token)
                    case .ping(let t, let ts):
                        try channel.send(.pong(token: t, timestamp: ts))
                    case .goodbye:
                        session.goodbye()
                        return
                    default:
                        logger.warning("session \(hex(session.id)): \(m.type) on the push channel, closing it")
                        session.close()
                        return
                    }
                } catch {
                    session.close()
                    return
                }
            }
        }
        // Bulk data yields the CPU to demand traffic at once (2 vCPUs here: otherwise a demand
        // request can wait a whole time slice behind the push). The reader above stays a normal
        // thread (prefetch requests are wanted soon); this thread's locks are all foreground
        // (ForegroundMutex), so it is never starved while holding one.
        if backgroundPush { try? makeCurrentThreadBackground() }
        channel.socket.setSendBufferSize(pushSendBuffer)
        channel.socket.setUnsentLimit(pushUnsentLimit)
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: Self.maxChunk, alignment: 4096)
        defer {
            session.close()
            reader.join()
            scratch.deallocate()
        }
        var regionIndex = 0
        var cursor = 0 // in pages of the current region
        var rounds: [UInt32: RoundProgress] = [:]
        for region in regions {
            guard let live = region.live, !live.outcome.switched else { continue }
            // Round 0 starts from a clean slate: protect everything, forget earlier writes.
            try live.tracker.protectAll()
            session.trackEverSent(region)
            if !live.policy.precopy {
                try switchToPostcopy(region, live, reason: .noPrecopy, rounds: 0, on: channel, session: session)
                continue
            }
            rounds[region.id] = RoundProgress(started: monotonicNanoseconds())
            logger.info("session \(hex(session.id)): pre-copy of live region \(region.id) begins (round 0: every page)")
        }
        while !session.isClosed {
            if let request = session.dequeue() {
                try answer(request, on: channel, session: session, flags: [], scratch: scratch)
                if let i = regions.firstIndex(where: { $0.id == request.region }) {
                    regionIndex = i
                    cursor = Int((request.offset + request.length) / UInt64(regions[i].pageSize))
                }
                continue
            }
            guard regionIndex < regions.count else {
                session.waitForWork() // everything pushed: only prefetch requests remain possible
                continue
            }
            let region = regions[regionIndex]
            if !waitUntilReleased(session) { break }
            let maxPages = max(1, pushChunk / region.pageSize)
            guard let run = session.claimUnsent(region, from: cursor, maxPages: maxPages) else {
                if let live = region.live, var progress = rounds[region.id] {
                    // A pre-copy round ended: send what was written meanwhile, or switch.
                    if try withForegroundPriority({ () throws -> Bool in try endRound(region, live, &progress, on: channel, session: session) }) {
                        rounds[region.id] = nil
                    } else {
                        rounds[region.id] = progress
                    }
                    cursor = 0
                    continue
                }
                try channel.send(.pushComplete(region: region.id, bytes: region.length))
                logger.info("session \(hex(session.id)): pushed all of region \(region.id)")
                regionIndex += 1
                cursor = 0
                continue
            }
            let size = UInt64(region.pageSize)
            let sent = try send(region, offset: UInt64(run.lowerBound) * size, length: UInt64(run.count) * size, requestID: 0,
                                flags: .push, on: channel, session: session, chunk: pushChunk, scratch: scratch)
            rounds[region.id]?.pages += run.count
            rounds[region.id]?.bytes += sent
            cursor = run.upperBound
        }
    }

    /// One pre-copy round in progress on a live region.
    private struct RoundProgress {
        var index = 0
        var started: UInt64
        var pages = 0
        var bytes: UInt64 = 0
        var history: [PrecopyRound] = []
        let precopyStarted = monotonicNanoseconds()
    }

    /// Ends a pre-copy round: scans for pages written during it, and either queues them for the
    /// next round (returns false) or switches to post-copy (returns true): pause the writer,
    /// scan once more, INVALIDATE what the destination holds stale, wait for its
    /// acknowledgements, then SWITCHED. After that the push carries on as post-copy.
    private func endRound(_ region: ServedRegion, _ live: LiveRegion, _ progress: inout RoundProgress,
                          on channel: FrameChannel, session: SourceSession) throws -> Bool {
        let scanStart = monotonicNanoseconds()
        let written = region.pages(of: try live.tracker.takeWritten(), memoryBase: region.trackedBase)
        let now = monotonicNanoseconds()
        let dirty = written.reduce(0) { $0 + $1.count }
        let round = PrecopyRound(index: progress.index, pagesSent: progress.pages, bytesSent: progress.bytes, dirtyPages: dirty,
                                 dirtyBytes: UInt64(dirty) * UInt64(region.pageSize), scanNanoseconds: now - scanStart,
                                 nanoseconds: now - progress.started)
        progress.history.append(round)
        live.record { $0.rounds.append(round) }
        logger.info("""
            session \(hex(session.id)): pre-copy round \(round.index) of region \(region.id): sent \(round.pagesSent) pages \
            (\(round.bytesSent >> 20) MiB as data) in \(now - progress.started < 1_000_000 ? "<1" : "\((now - progress.started) / 1_000_000)") ms \
            (\(Int(round.rate) >> 20) MiB/s); scan found \(dirty) pages written, in \((now - scanStart) / 1000) µs
            """)
        session.markUnsent(region, written)
        let decision = live.policy.decide(after: progress.history, elapsed: now - progress.precopyStarted, forced: live.isForced)
        guard case .switchToPostcopy(let reason) = decision else {
            progress.index += 1
            progress.started = monotonicNanoseconds()
            progress.pages = 0
            progress.bytes = 0
            return false
        }
        try switchToPostcopy(region, live, reason: reason, rounds: progress.history.count, on: channel, session: session)
        return true
    }

    /// Pauses the writer, scans once more, INVALIDATEs what the destination holds stale, waits
    /// for the acknowledgements, and sends SWITCHED.
    private func switchToPostcopy(_ region: ServedRegion, _ live: LiveRegion, reason: ConvergencePolicy.Reason, rounds: Int,
                                  on channel: FrameChannel, session: SourceSession) throws {
        // Everything from the pause to SWITCHED is time the workload is stopped. First let the
        // destination take in every frame sent so far (a PING answered on the push connection
        // comes after them), so that after the pause INVALIDATE's answer costs one round trip,
        // not the draining of megabytes of queued round data.
        logger.info("session \(hex(session.id)): switching region \(region.id) to post-copy: \(reason)")
        let token = UInt64(session.nextSequence())
        try channel.send(.ping(token: token, timestamp: monotonicNanoseconds()))
        guard session.waitFor({ $0.ponged >= token }, timeoutMilliseconds: 30_000) else {
            throw SessionError.refuse(.timeout, "the destination did not answer PING \(token) within 30 s")
        }
        let paused = monotonicNanoseconds()
        do { try live.pause() } catch {
            throw SessionError.refuse(.ioError, "cannot pause the writer of region \(region.id): \(error)")
        }
        let stopped = monotonicNanoseconds()
        // Nothing sent yet (no pre-copy): nothing can be stale, no scan needed.
        let final = rounds == 0 ? [] : region.pages(of: try live.tracker.takeWritten(), memoryBase: region.trackedBase)
        let scanned = monotonicNanoseconds()
        session.markUnsent(region, final)
        // Stale at the destination: pages it holds (sent at least once) whose latest content it
        // was not sent. They become missing there and are fetched again.
        let stale = session.staleRuns(region)
        let size = UInt64(region.pageSize)
        var lastSequence: UInt32 = 0
        // INVALIDATE frames of at most 4096 ranges (64 KiB of payload).
        for start in stride(from: 0, to: stale.count, by: 4096) {
            let ranges = stale[start..<min(stale.count, start + 4096)].map {
                PageRange(offset: UInt64($0.lowerBound) * size, length: UInt64($0.count) * size)
            }
            lastSequence = session.nextSequence()
            try channel.send(.invalidate(Invalidate(sequence: lastSequence, region: region.id, ranges: ranges)))
        }
        if lastSequence != 0 {
            guard session.waitFor({ $0.acknowledged >= lastSequence }, timeoutMilliseconds: 30_000) else {
                throw SessionError.refuse(.timeout, "the destination did not acknowledge INVALIDATE \(lastSequence) within 30 s")
            }
        }
        // Recorded before SWITCHED goes out: whoever sees SWITCHED sees this outcome.
        let pause = monotonicNanoseconds() - paused
        let stalePages = stale.reduce(0) { $0 + $1.count }
        live.record {
            $0.reason = reason
            $0.finalDirtyPages = final.reduce(0) { $0 + $1.count }
            $0.invalidatedPages = stalePages
            $0.pauseNanoseconds = pause
            $0.switched = true
        }
        try channel.send(.switched(region: region.id, lastSequence: lastSequence))
        logger.info("""
            session \(hex(session.id)): region \(region.id) switched to post-copy after \(rounds) round(s): \
            final scan found \(final.reduce(0) { $0 + $1.count }) pages written after the last round, \(stalePages) pages invalidated, \
            writer paused for \(pause / 1000) µs before SWITCHED (stopping it \((stopped - paused) / 1000) µs, \
            final scan \((scanned - stopped) / 1000) µs, invalidation \((paused + pause - scanned) / 1000) µs)
            """)
    }
}

enum SessionError: Error {
    case refuse(ErrorCode, String)
}

/// Per-destination state shared by its demand and push connections.
final class SourceSession: @unchecked Sendable {
    let id: UInt64
    let token: [UInt8]
    let features: Features
    let peer: String
    private let state = ForegroundMutex(State())
    private let work = DispatchSemaphore(value: 0)

    struct State {
        var queue: [PageRequest] = []
        var closed = false
        var goodbye = false
        /// Pages whose latest content was sent to this destination, per region (answers and
        /// push); a page written afterwards (pre-copy) is removed again.
        var sent: [UInt32: PageBitmap] = [:]
        /// Live regions only: pages sent at least once, whatever was written since.
        var everSent: [UInt32: PageBitmap] = [:]
        var sequence: UInt32 = 0
        var acknowledged: UInt32 = 0
        var ponged: UInt64 = 0
        var demand: FrameChannel?

        /// Runs `body` on the `sent` map of `region` in place. Copying the map out and back
        /// would copy its whole storage on every change (copy-on-write: the dictionary still
        /// holds it), 32 KiB per request for a 1 GiB region.
        mutating func changeSent<R>(_ region: ServedRegion, _ body: (inout PageBitmap) -> R) -> R {
            if sent[region.id] == nil { sent[region.id] = PageBitmap(count: Int(region.length / UInt64(region.pageSize))) }
            return body(&sent[region.id]!)
        }
    }

    init(features: Features, peer: String) {
        var rng = SystemRandomNumberGenerator()
        var id: UInt64 = 0
        while id == 0 { id = rng.next() }
        self.id = id
        token = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        self.features = features
        self.peer = peer
    }

    func attachDemand(_ channel: FrameChannel) { state.withLock { $0.demand = channel } }

    func enqueue(_ r: PageRequest) {
        state.withLock { $0.queue.append(r) }
        work.signal()
    }

    func dequeue() -> PageRequest? { state.withLock { $0.queue.isEmpty ? nil : $0.queue.removeFirst() } }

    var isClosed: Bool { state.withLock { $0.closed } }
    var saidGoodbye: Bool { state.withLock { $0.goodbye } }

    /// The destination ended the session cleanly.
    func goodbye() {
        state.withLock { $0.goodbye = true }
        close()
    }

    func close() {
        let demand = state.withLock { s -> FrameChannel? in
            s.closed = true
            return s.demand
        }
        work.signal()
        demand?.socket.shutdown()
    }

    /// Records pages of `region` as sent (by an answer).
    func markSent(_ region: ServedRegion, offset: UInt64, length: UInt64) {
        let size = UInt64(region.pageSize)
        state.withLock {
            let pages = Int(offset / size)..<Int((offset + length) / size)
            _ = $0.changeSent(region) { $0.insert(pages) }
            if $0.everSent[region.id] != nil { _ = $0.everSent[region.id]!.insert(pages) }
        }
    }

    /// Starts keeping the pages of live `region` sent at least once.
    func trackEverSent(_ region: ServedRegion) {
        state.withLock { s in
            s.everSent[region.id] = s.sent[region.id] ?? PageBitmap(count: Int(region.length / UInt64(region.pageSize)))
        }
    }

    /// Pages written since they were sent: the push sends them again.
    func markUnsent(_ region: ServedRegion, _ runs: [Range<Int>]) {
        state.withLock { s in
            guard s.sent[region.id] != nil else { return }
            for r in runs { _ = s.sent[region.id]!.remove(r) }
        }
    }

    /// Pages the destination holds that are out of date: sent once, not sent since written.
    func staleRuns(_ region: ServedRegion) -> [Range<Int>] {
        state.withLock { s in
            guard let ever = s.everSent[region.id] else { return [] }
            let sent = s.sent[region.id] ?? PageBitmap(count: ever.count)
            var result: [Range<Int>] = []
            var i = 0
            while let start = ever.first(true, from: i) {
                let end = ever.first(false, from: start) ?? ever.count
                var p = start
                while p < end, let gap = sent.first(false, from: p), gap < end {
                    let gapEnd = min(end, sent.first(true, from: gap) ?? sent.count)
                    result.append(gap..<gapEnd)
                    p = gapEnd
                }
                i = end
            }
            return result
        }
    }

    func nextSequence() -> UInt32 { state.withLock { $0.sequence += 1; return $0.sequence } }

    func acknowledge(_ sequence: UInt32) {
        state.withLock { $0.acknowledged = max($0.acknowledged, sequence) }
        work.signal()
    }

    func ponged(_ token: UInt64) {
        state.withLock { $0.ponged = max($0.ponged, token) }
        work.signal()
    }

    /// Waits until `condition` holds (an acknowledgement or answer arrived); false on timeout or close.
    func waitFor(_ condition: (State) -> Bool, timeoutMilliseconds: Int) -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        while monotonicNanoseconds() < deadline {
            let (done, closed) = state.withLock { (condition($0), $0.closed) }
            if done { return true }
            if closed { return false }
            _ = work.wait(timeout: .now() + .milliseconds(10))
        }
        return false
    }

    /// Marks every page of `region` sent: the destination needs nothing more from it.
    func markAllSent(_ region: ServedRegion) {
        markSent(region, offset: 0, length: region.length)
    }

    /// Claims the next run of pages not yet sent, starting at `from` and wrapping once, at
    /// most `maxPages` long, and marks it sent. Nil when every page was sent.
    func claimUnsent(_ region: ServedRegion, from: Int, maxPages: Int) -> Range<Int>? {
        state.withLock { s in
            let claimed: Range<Int>? = s.changeSent(region) { map in
                guard let start = map.first(false, from: min(from, map.count)) ?? map.first(false, from: 0) else { return nil }
                let end = min(map.first(true, from: start) ?? map.count, start + maxPages)
                _ = map.insert(start..<end)
                return start..<end
            }
            if let claimed, s.everSent[region.id] != nil { _ = s.everSent[region.id]!.insert(claimed) }
            return claimed
        }
    }

    /// Waits (at most 100 ms) until a request is queued or the session closes.
    func waitForWork() {
        _ = work.wait(timeout: .now() + .milliseconds(100))
    }
}
