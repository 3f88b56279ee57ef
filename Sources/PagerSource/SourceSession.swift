import PagerCore
import PagerKernel
import PagerTransport
import PagerWire
import Synchronization

/// Where a session stands. Once it is not `open` it never is again.
enum SessionLifecycle: Equatable, Sendable {
    case open
    /// The destination said GOODBYE: whatever breaks while its connections close is expected.
    case saidGoodbye
    case closed(CloseReason)
}

/// Why a session closed without a GOODBYE.
enum CloseReason: Equatable, Sendable {
    /// Receiving on the push connection failed (the destination went away or sent garbage).
    case pushReceiveFailed
    /// The destination sent a message the push connection does not take.
    case unexpectedOnPush(MessageType)
    /// ``SourceServer/stop()``.
    case serverStopped
    /// Its connections were lost and none came back within the linger time.
    case lingerExpired
    /// A connection ended by an error that a resume does not repair (a malformed frame, a
    /// refused request, a session that cannot resume).
    case failed
}

/// Which of a session's connections: the demand one (requests and their answers) or the push.
enum ChannelRole: String, Sendable {
    case demand, push
}

/// A connection attached to a session, with the number that tells it from the one that
/// replaces it after a resume.
struct Attachment: Sendable {
    let connection: any FrameConnection
    let generation: UInt64
}

/// Per-destination state shared by its demand and push connections.
final class SourceSession: @unchecked Sendable {
    let id: UInt64
    let token: [UInt8]
    let features: Features
    let peer: String
    /// This session's share of the server's totals (atomics: the demand path takes no lock for them).
    let counters = SessionCounters()
    private let state: WaitableState<State>
    /// Woken when the session closes: a sender held there gives up.
    private let gate: ReleaseGate

    struct State {
        var lifecycle = SessionLifecycle.open
        /// Prefetch requests that arrived on the push connection, answered by the push first.
        var queue: [PageRequest] = []
        var pages: SentPages
        var sequence: UInt32 = 0
        var acknowledged: UInt32 = 0
        var ponged: UInt64 = 0
        var demand: Attachment?
        var push: Attachment?
        /// Numbers the attachments: a replaced connection's thread sees it is not current.
        var generations: UInt64 = 0
        /// A push connection whose reader lost it: its push loop stops.
        var lostPush: UInt64 = 0
        /// Times a connection attached to a session that had one of that role before (resumes).
        var reattached = 0
        /// RECEIVED maps applied (see ``applyReceived(_:held:)``).
        var restarts = 0
        var hadPush = false
        var hadDemand = false
        /// The push connection whose turn it is to push (one at a time: a resumed one waits
        /// for the lost one's thread to be done with the pre-copy rounds and the sent pages).
        var pushTurn: UInt64?
        /// RECEIVED maps applied and not yet seen by the push: region, and whether staged.
        var arrivedMaps: [(region: UInt32, staged: Bool)] = []
        var isOpen: Bool { lifecycle == .open }

        func attachment(_ role: ChannelRole) -> Attachment? { role == .demand ? demand : push }
    }

    /// The pre-copy rounds of the live regions, across the session's push connections.
    let precopy: PrecopyRounds

    init(features: Features, peer: String, regions: [ServedRegion], gate: ReleaseGate) {
        resumable = features.contains(.resume)
        precopy = PrecopyRounds(regions: regions)
        var rng = SystemRandomNumberGenerator()
        var id: UInt64 = 0
        while id == 0 { id = rng.next() }
        self.id = id
        token = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        self.features = features
        self.peer = peer
        self.gate = gate
        let pageCounts = Dictionary(regions.map { ($0.id, $0.pageCount) }, uniquingKeysWith: { a, _ in a })
        state = WaitableState(State(pages: SentPages(pageCounts: pageCounts)))
    }

    /// Whether a connection lost without GOODBYE leaves the session waiting for a resume (the
    /// destination offered `resume`; pre-copy rounds survive it, see ``PrecopyRounds``).
    let resumable: Bool

    // MARK: Connections (see SessionRegistry for the session's lifetime)

    /// Attaches `connection` as the session's `role` connection, replacing (and shutting
    /// down) one still attached: a peer that reconnects has left that one half-open. Returns
    /// its generation, by which it later leaves.
    func attach(_ role: ChannelRole, _ connection: any FrameConnection) -> UInt64 {
        let (replaced, generation) = state.change { s -> (Attachment?, UInt64) in
            s.generations += 1
            let new = Attachment(connection: connection, generation: s.generations)
            let old = s.attachment(role)
            // A second connection of a role is a resume (the first push may attach before the
            // first demand connection: both complete their handshakes independently).
            if role == .demand ? s.hadDemand : s.hadPush { s.reattached += 1 }
            if role == .demand {
                s.demand = new
                s.hadDemand = true
            } else {
                s.push = new
                s.hadPush = true
                s.queue.removeAll() // the destination asks again on the new connection
            }
            return (old, new.generation)
        }
        replaced?.connection.shutdown()
        return generation
    }

    /// Whether `generation` is still the session's `role` connection and the session is open.
    /// The connection of `role` attached now (nil once the session is closed).
    func currentConnection(_ role: ChannelRole) -> (any FrameConnection)? {
        state.withLock { $0.isOpen ? $0.attachment(role)?.connection : nil }
    }

    func isCurrent(_ role: ChannelRole, _ generation: UInt64) -> Bool {
        state.withLock { $0.isOpen && $0.attachment(role)?.generation == generation && !(role == .push && $0.lostPush == generation) }
    }

    /// The push reader lost its connection: the push loop of `generation` stops.
    func pushLost(_ generation: UInt64) { state.change { $0.lostPush = max($0.lostPush, generation) } }

    /// The connection of `generation` ended: it leaves the session (unless replaced already).
    /// Returns true when no connection is attached any more.
    func detach(_ role: ChannelRole, _ generation: UInt64) -> Bool {
        state.change { s -> Bool in
            if s.attachment(role)?.generation == generation {
                if role == .demand { s.demand = nil } else { s.push = nil }
            }
            return s.demand == nil && s.push == nil
        }
    }

    /// Waits, with no connection attached, until one attaches (true), or the session closes
    /// or `deadline` (monotonic ns) passes (false).
    func linger(until deadline: UInt64) -> Bool {
        state.wait(until: { $0.demand != nil || $0.push != nil || !$0.isOpen }, deadline: deadline)
        return state.withLock { ($0.demand != nil || $0.push != nil) && $0.isOpen }
    }

    /// Resumes so far (connections that replaced an earlier one of the session's).
    var resumes: Int { state.withLock { $0.reattached } }
    /// Its demand connection attached, and its push one too if it ever had one.
    var isConnected: Bool { state.withLock { $0.demand != nil && ($0.push != nil || !$0.hadPush) } }

    // MARK: Lifecycle

    var lifecycle: SessionLifecycle { state.withLock { $0.lifecycle } }
    var isClosed: Bool { !state.withLock { $0.isOpen } }
    var saidGoodbye: Bool { lifecycle == .saidGoodbye }

    /// The destination ended the session cleanly (GOODBYE), whatever closed it before.
    func goodbye() { end(.saidGoodbye) }

    /// Closes the session (if still open): its waiters wake, its connections are shut down.
    func close(_ reason: CloseReason) { end(.closed(reason)) }

    /// Ends the session: its waiters wake, and its connections are shut down (a push blocked
    /// in a send to a vanished destination, a reader blocked in a receive, end at once).
    private func end(_ to: SessionLifecycle) {
        let connections = state.change { s -> [any FrameConnection] in
            if s.isOpen || to == .saidGoodbye { s.lifecycle = to }
            return [s.demand?.connection, s.push?.connection].compactMap { $0 }
        }
        gate.wakeAll()
        for c in connections { c.shutdown() }
    }

    // MARK: Prefetch queue

    func enqueue(_ r: PageRequest) { state.change { $0.queue.append(r) } }

    func dequeue() -> PageRequest? { state.withLock { $0.queue.isEmpty ? nil : $0.queue.removeFirst() } }

    /// Blocks until a request is queued, the session closes, or push connection `generation`
    /// is replaced or lost, or a RECEIVED map restarts the push.
    func waitForWork(push generation: UInt64, restarts: Int) {
        _ = state.wait(until: { s in
            !s.queue.isEmpty || !s.isOpen || s.push?.generation != generation || s.lostPush == generation || s.restarts != restarts
        })
    }

    // MARK: Resume

    /// A RECEIVED map (the union of its frames) is complete for `region`: the push resends
    /// what is outside it, from its start (`staged`: only what it holds confirmed counts, see
    /// ``SentPages/reset(_:held:staged:)``). Returns the pages sent before that the
    /// destination does not hold (lost in flight with the connections): they are sent again.
    func applyReceived(_ region: ServedRegion, held: [Range<Int>], staged: Bool = false) -> Int {
        let lost = state.change { s -> Int in
            s.restarts += 1
            s.arrivedMaps.append((region.id, staged))
            return s.pages.reset(region.id, held: held, staged: staged && region.live != nil)
        }
        counters.resentBytes.add(UInt64(lost) * UInt64(region.pageSize), ordering: .relaxed)
        return lost
    }

    /// How many RECEIVED maps restarted the push so far: the push loop restarts its cursor
    /// when this changes.
    var restarts: Int { state.withLock { $0.restarts } }

    /// The RECEIVED maps applied since the last call (for the pre-copy rounds).
    func takeArrivedMaps() -> [(region: UInt32, staged: Bool)] {
        state.withLock { s in
            defer { s.arrivedMaps = [] }
            return s.arrivedMaps
        }
    }

    /// Waits until no other push connection has the turn, then takes it for `generation`:
    /// false if the session closed or `generation` was replaced meanwhile.
    func takePushTurn(_ generation: UInt64) -> Bool {
        _ = state.wait(until: { s in s.pushTurn == nil || !s.isOpen || s.push?.generation != generation })
        return state.change { s -> Bool in
            guard s.pushTurn == nil, s.isOpen, s.push?.generation == generation else { return false }
            s.pushTurn = generation
            return true
        }
    }

    /// Push connection `generation` is done pushing.
    func releasePushTurn(_ generation: UInt64) {
        state.change { if $0.pushTurn == generation { $0.pushTurn = nil } }
    }

    // MARK: Sent pages (see SentPages)

    /// Records pages of `region` as sent (by an answer).
    func markSent(_ region: ServedRegion, offset: UInt64, length: UInt64) {
        let size = UInt64(region.pageSize)
        state.withLock { $0.pages.markSent(region.id, Int(offset / size)..<Int((offset + length) / size)) }
    }

    /// Marks every page of `region` sent: the destination needs nothing more from it.
    func markAllSent(_ region: ServedRegion) { state.withLock { $0.pages.markAllSent(region.id) } }

    /// Starts keeping the pages of live `region` sent at least once.
    func trackEverSent(_ region: ServedRegion) { state.withLock { $0.pages.trackEverSent(region.id) } }

    /// Pages written since they were sent: the push sends them again.
    func markUnsent(_ region: ServedRegion, _ runs: [Range<Int>]) { state.withLock { $0.pages.markUnsent(region.id, runs) } }

    /// Pages the destination holds that are out of date: sent once, not sent since written.
    func staleRuns(_ region: ServedRegion) -> [Range<Int>] { state.withLock { $0.pages.staleRuns(region.id) } }

    /// Claims the pages of `pages` not sent yet (``SentPages/claimUnsent(_:in:)``).
    func claimUnsent(_ region: ServedRegion, in pages: Range<Int>) -> [Range<Int>] {
        state.withLock { $0.pages.claimUnsent(region.id, in: pages) }
    }

    /// Claims the next run of pages not yet sent (see ``SentPages/claimUnsent(_:from:maxPages:)``).
    func claimUnsent(_ region: ServedRegion, from: Int, maxPages: Int) -> Range<Int>? {
        state.withLock { $0.pages.claimUnsent(region.id, from: from, maxPages: maxPages) }
    }

    // MARK: Sequences, acknowledgements, pongs

    func nextSequence() -> UInt32 { state.withLock { $0.sequence += 1; return $0.sequence } }

    /// INVALIDATE_ACK `sequence` arrived.
    func acknowledge(_ sequence: UInt32) { state.change { $0.acknowledged = max($0.acknowledged, sequence) } }

    /// PONG `token` arrived: what was sent before its PING is confirmed (live regions).
    func ponged(_ token: UInt64) {
        state.change {
            $0.ponged = max($0.ponged, token)
            $0.pages.confirm(upTo: token)
        }
    }

    /// A checkpoint PING `token` goes out after everything sent so far (SentPages); false
    /// if nothing was sent since the last one.
    @discardableResult
    func checkpoint(token: UInt64) -> Bool { state.withLock { $0.pages.checkpoint(token: token) } }

    /// How a wait for the destination's answer on push connection `generation` ended.
    enum Answer { case answered, connectionGone, timedOut }

    /// Waits until `condition` holds, push connection `generation` is lost or replaced (or the
    /// session closes), or `timeoutMilliseconds` pass.
    func waitForAnswer(push generation: UInt64, timeoutMilliseconds: Int, _ condition: @escaping (State) -> Bool) -> Answer {
        let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        let gone: (State) -> Bool = { s in !s.isOpen || s.push?.generation != generation || s.lostPush == generation }
        _ = state.wait(until: { condition($0) || gone($0) }, deadline: deadline)
        return state.withLock { s in condition(s) ? .answered : gone(s) ? .connectionGone : .timedOut }
    }
}

/// What one session served, counted as it goes (relaxed atomics: totals for the summary, no
/// ordering with anything else).
final class SessionCounters: Sendable {
    let demandRequests = Atomic<Int>(0)
    let prefetchRequests = Atomic<Int>(0)
    let bytesSent = Atomic<UInt64>(0)
    let zeroBytes = Atomic<UInt64>(0)
    /// Data bytes the push left to the destination's READs (PUSH_READ).
    let readBytes = Atomic<UInt64>(0)
    /// Bytes sent before a resume that the destination's RECEIVED map says did not arrive.
    let resentBytes = Atomic<UInt64>(0)

    /// Adds these counts to `totals`.
    func add(to totals: inout SourceServer.Counters) {
        totals.demandRequests += demandRequests.load(ordering: .relaxed)
        totals.prefetchRequests += prefetchRequests.load(ordering: .relaxed)
        totals.bytesSent += bytesSent.load(ordering: .relaxed)
        totals.zeroBytes += zeroBytes.load(ordering: .relaxed)
        totals.pushReadBytes += readBytes.load(ordering: .relaxed)
        totals.resentBytes += resentBytes.load(ordering: .relaxed)
    }
}
