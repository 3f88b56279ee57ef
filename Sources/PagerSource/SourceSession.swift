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
    /// The push connection ended (its loop returned or failed).
    case pushEnded
    /// Receiving on the push connection failed (the destination went away or sent garbage).
    case pushReceiveFailed
    /// The destination sent a message the push connection does not take.
    case unexpectedOnPush(MessageType)
    /// ``SourceServer/stop()``.
    case serverStopped
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
        var demand: (any FrameConnection)?
        var isOpen: Bool { lifecycle == .open }
    }

    init(features: Features, peer: String, regions: [ServedRegion], gate: ReleaseGate) {
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

    func attachDemand(_ channel: any FrameConnection) { state.withLock { $0.demand = channel } }

    // MARK: Lifecycle

    var lifecycle: SessionLifecycle { state.withLock { $0.lifecycle } }
    var isClosed: Bool { !state.withLock { $0.isOpen } }
    var saidGoodbye: Bool { lifecycle == .saidGoodbye }

    /// The destination ended the session cleanly (GOODBYE), whatever closed it before.
    func goodbye() { end(.saidGoodbye) }

    /// Closes the session (if still open): its waiters wake, its demand connection is shut down.
    func close(_ reason: CloseReason) { end(.closed(reason)) }

    private func end(_ to: SessionLifecycle) {
        let demand = state.change { s -> (any FrameConnection)? in
            if s.isOpen || to == .saidGoodbye { s.lifecycle = to }
            return s.demand
        }
        gate.wakeAll()
        demand?.shutdown()
    }

    // MARK: Prefetch queue

    func enqueue(_ r: PageRequest) { state.change { $0.queue.append(r) } }

    func dequeue() -> PageRequest? { state.withLock { $0.queue.isEmpty ? nil : $0.queue.removeFirst() } }

    /// Blocks until a request is queued or the session closes.
    func waitForWork() { _ = state.wait(until: { !$0.queue.isEmpty || !$0.isOpen }) }

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

    /// Claims the next run of pages not yet sent (see ``SentPages/claimUnsent(_:from:maxPages:)``).
    func claimUnsent(_ region: ServedRegion, from: Int, maxPages: Int) -> Range<Int>? {
        state.withLock { $0.pages.claimUnsent(region.id, from: from, maxPages: maxPages) }
    }

    // MARK: Sequences, acknowledgements, pongs

    func nextSequence() -> UInt32 { state.withLock { $0.sequence += 1; return $0.sequence } }

    /// INVALIDATE_ACK `sequence` arrived.
    func acknowledge(_ sequence: UInt32) { state.change { $0.acknowledged = max($0.acknowledged, sequence) } }

    /// PONG `token` arrived.
    func ponged(_ token: UInt64) { state.change { $0.ponged = max($0.ponged, token) } }

    /// Waits until `condition` holds (an acknowledgement or answer arrived); false on timeout or close.
    func waitFor(_ condition: (State) -> Bool, timeoutMilliseconds: Int) -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        var done = false
        _ = state.wait(until: { s in
            done = condition(s)
            return done || !s.isOpen
        }, deadline: deadline)
        return done
    }
}

/// What one session served, counted as it goes (relaxed atomics: totals for the summary, no
/// ordering with anything else).
final class SessionCounters: Sendable {
    let demandRequests = Atomic<Int>(0)
    let prefetchRequests = Atomic<Int>(0)
    let bytesSent = Atomic<UInt64>(0)
    let zeroBytes = Atomic<UInt64>(0)

    /// Adds these counts to `totals`.
    func add(to totals: inout SourceServer.Counters) {
        totals.demandRequests += demandRequests.load(ordering: .relaxed)
        totals.prefetchRequests += prefetchRequests.load(ordering: .relaxed)
        totals.bytesSent += bytesSent.load(ordering: .relaxed)
        totals.zeroBytes += zeroBytes.load(ordering: .relaxed)
    }
}
