import Logging
import PagerCore
import PagerKernel
import PagerTransport
import PagerWire

/// Makes new connections to the source for a session whose connections were lost: the
/// handshake of §6 with the session's id and token (and its keys), checked to announce the
/// same session and REGIONs. ``DestinationClient/Resumer`` is the TCP one.
public protocol SessionResumer: Sendable {
    /// Both connections again (the push one only if `push`), each connected and through its
    /// handshake within `timeoutMilliseconds`. Throws what the attempt failed with.
    func resume(push: Bool, timeoutMilliseconds: Int) throws -> (demand: any FrameConnection, push: (any FrameConnection)?)
}

/// Which of the two connections to the source.
enum LinkRole { case demand, push }

extension FaultResolver {
    /// The connections to the source the resolver uses now. Replaced as a whole by a resume,
    /// under the state lock; `generation` tells a receiver or a send on replaced connections
    /// that what it saw is no longer news.
    struct Link {
        var demand: any FrameConnection
        var push: (any FrameConnection)?
        var generation: UInt64 = 1
        /// When the connections were found lost; nil while they work.
        var downSince: UInt64?
    }

    /// Connection `generation` failed with `error`. With a resumer and a failure a resume
    /// repairs (`resumable`), the link goes down and a thread reconnects while faults wait;
    /// otherwise the migration fails. Nothing happens for replaced connections, once every
    /// page is local, or after the migration ended.
    func lost(_ generation: UInt64, _ error: ResolveError, resumable: Bool) {
        let now = monotonicNanoseconds()
        let down = lock.withLock { state -> Link? in
            guard case .fetching = state.phase, !state.pages.isComplete,
                  state.link.generation == generation, state.link.downSince == nil else { return nil }
            guard resumable, configuration.resumer != nil else {
                state.fail(error)
                return nil
            }
            state.link.downSince = now
            state.report.outages.append(Outage(cause: error.cause, detectedAt: now))
            configuration.progress?.outages.store(state.report.outages.count, ordering: .relaxed)
            configuration.progress?.enter(.postcopyPaused)
            return state.link
        }
        guard let down else { return }
        down.demand.shutdown()
        down.push?.shutdown()
        logger.warning("connection to the source lost (\(error.cause)): faults wait while it reconnects, for up to \(configuration.reconnectTimeoutMilliseconds / 1000) s")
        do {
            let thread = try KernelThread(name: "dst-reconnect") { [self] in reconnect(after: now, hadPush: down.push != nil) }
            spawned.withLock { $0.append(thread) }
        } catch {
            lock.withLock { $0.fail(.kernel(error)) }
        }
    }

    /// Ends the migration from outside (a signal, the guest gone): it fails with `reason`,
    /// resumes nothing, and ``run()`` poisons what is missing and throws.
    public func abort(_ reason: String) {
        let link = lock.withLock { state -> Link in
            state.fail(.aborted(reason))
            return state.link
        }
        link.demand.shutdown()
        link.push?.shutdown()
    }

    /// Tries to resume (``resumeSession``) until it succeeds, the source refuses, the window
    /// ends, or the migration ends. A failure here fails the migration: its missing pages are
    /// poisoned.
    private func reconnect(after since: UInt64, hadPush: Bool) {
        let outcome = resumeSession(configuration.resumer!, push: hadPush, stallTimeoutMilliseconds: configuration.stallTimeoutMilliseconds,
                                    since: since, windowMilliseconds: configuration.reconnectTimeoutMilliseconds, attemptName: "resume attempt",
                                    logger: logger, ongoing: { [self] in
            lock.withLock { state -> Bool in
                if case .fetching = state.phase { return !state.pages.isComplete }
                return false
            }
        }) { [self] demand, push, attempts in
            try adopt(demand, push, downSince: since, attempts: attempts)
        }
        if case .failure(let error)? = outcome { lock.withLock { $0.fail(error) } }
    }

    /// Whether another attempt to connect may succeed after `error` (the network or the
    /// source's process is not there yet), as opposed to a source that answered and refused.
    public static func mayRetry(_ error: any Error) -> Bool { refusal(error) == nil }

    /// Why a resume attempt's failure is final (the source answered, and said no), or nil when
    /// another attempt may succeed (the network or the source's process is not back yet).
    static func refusal(_ error: any Error) -> String? {
        switch error {
        case let e as ChannelError where e.isConnectionLoss: nil
        case is KernelError: nil // connect refused, unreachable, timed out
        default: "\(error)"
        }
    }

    /// New connections resumed the session: tells the source what is held (RECEIVED on the
    /// push connection, before anything else on it), then, atomically under the lock, makes
    /// them current, puts every page in flight on the old ones back to missing (waiting faults
    /// ask again at once, see ``WaitingFaults/review``) and starts their receivers. Huge
    /// pages half assembled by the old receivers are dropped with them.
    private func adopt(_ demand: any FrameConnection, _ push: (any FrameConnection)?, downSince: UInt64, attempts: Int) throws {
        if let push {
            let held = lock.withLock { $0.pages.heldRuns(staged: $0.stagedUnits) }
            try sendReceived(held, on: push)
        }
        let now = monotonicNanoseconds()
        let adopted = lock.withLock { state -> (generation: UInt64, requeued: Int, asked: Int, waited: UInt64)? in
            guard case .fetching = state.phase else { return nil }
            state.link = Link(demand: demand, push: push, generation: state.link.generation + 1)
            let requeued = state.pages.requeueInFlight(keeping: state.stagedUnits)
            // Of those, the ones a fault waits on are asked for again at once (the fault
            // loop's review); the rest are left to the push, which RECEIVED has just aimed.
            let asked = state.faults.count
            let waited = state.faults.longestWait(now: now)
            state.faults.forgetUrgent()
            state.phase = .fetching(pushComplete: false)
            state.pingsSent = 0
            configuration.progress?.resumes.add(1, ordering: .relaxed)
            configuration.progress?.enter(.postcopyActive)
            if !state.report.outages.isEmpty {
                let i = state.report.outages.count - 1
                state.report.outages[i].resumedAfterNanoseconds = now - downSince
                state.report.outages[i].attempts = attempts
                state.report.outages[i].pagesInFlight = requeued
                state.report.outages[i].faultsAskedAgain = asked
                state.report.outages[i].longestFaultWaitNanoseconds = waited
            }
            return (state.link.generation, requeued, asked, waited)
        }
        guard let (generation, requeued, asked, waited) = adopted else {
            demand.shutdown()
            push?.shutdown()
            return
        }
        lastHeard.store(now, ordering: .relaxed)
        lastPushFrame.store(now, ordering: .relaxed)
        logger.warning("session resumed after \(milliseconds(now - downSince)) ms (\(attempts) attempt(s)); \(asked) waiting faults asked for again; \(requeued) pages in flight back to missing, left to the push; the longest-waiting fault had waited \(milliseconds(waited)) ms")
        startReceivers(demand, push, generation: generation)
    }

    /// RECEIVED frames for the region: `held` (runs of units) as byte ranges, as many per
    /// frame as the source accepts, `more` on all but the last.
    private func sendReceived(_ held: [Range<Int>], on push: any FrameConnection) throws {
        let u = UInt64(unit)
        let ranges = held.map { PageRange(offset: UInt64($0.lowerBound) * u, length: UInt64($0.count) * u) }
        for frame in Received.frames(region: region.id, ranges: ranges, staged: false, maxPayload: push.sendLimit) {
            try push.send(.received(frame))
        }
    }
}

/// Tries to resume a session through `resumer`, with backoff (50 ms doubling to 1 s) from
/// `since` for `windowMilliseconds`: each attempt makes the connections (the push one if
/// `push`), each within a timeout drawn from the stall timeout, and hands them to `adopt`
/// (a failure there shuts them down and counts as a failed attempt). Returns `adopt`'s value,
/// the reason it is over (the source refused: the session is gone, no later attempt can
/// succeed; or the window ended), or nil once `ongoing` says nothing needs the session any
/// more. Shared by post-copy (``FaultResolver``) and pre-copy (``StagedPages``).
func resumeSession<T>(_ resumer: any SessionResumer, push: Bool, stallTimeoutMilliseconds: Int, since: UInt64,
                      windowMilliseconds: Int, attemptName: String, logger: Logger, ongoing: () -> Bool = { true },
                      adopt: (any FrameConnection, (any FrameConnection)?, _ attempts: Int) throws -> T) -> Result<T, ResolveError>? {
    var backoff = Backoff(deadline: since + UInt64(windowMilliseconds) * 1_000_000)
    var attempts = 0
    while true {
        guard ongoing() else { return nil }
        attempts += 1
        do {
            let (demand, pushConnection) = try resumer.resume(push: push, timeoutMilliseconds: attemptTimeoutMilliseconds(stall: stallTimeoutMilliseconds))
            do {
                return .success(try adopt(demand, pushConnection, attempts))
            } catch {
                demand.shutdown()
                pushConnection?.shutdown()
                throw error
            }
        } catch {
            if let refusal = FaultResolver.refusal(error) { return .failure(.resumeRefused(refusal)) }
            if attempts == 1 || attempts % 10 == 0 { logger.info("\(attemptName) \(attempts) failed: \(error)") }
            guard backoff.wait() else {
                return .failure(.reconnectTimedOut(seconds: windowMilliseconds / 1000, attempts: attempts, last: "\(error)"))
            }
        }
    }
}

/// How long one attempt to reach the source may take for its connect and its handshake:
/// the stall timeout, within 250 ms and 2 s. A source that does not answer in that time is
/// tried again (with backoff) rather than waited for, first connections included.
public func attemptTimeoutMilliseconds(stall: Int) -> Int { max(250, min(2_000, stall)) }

/// `nanoseconds` as milliseconds with one decimal ("2.3"), for the logs.
func milliseconds(_ nanoseconds: UInt64) -> String {
    "\(nanoseconds / 1_000_000).\(nanoseconds / 100_000 % 10)"
}

/// The waits between attempts to reach a source: 50 ms, doubling to 1 s, until `deadline`.
public struct Backoff {
    let deadline: UInt64
    private var delayMilliseconds = 50

    /// `deadline`: monotonic ns after which no attempt starts.
    public init(deadline: UInt64) { self.deadline = deadline }

    /// Sleeps before the next attempt and returns true, or returns false at once when that
    /// attempt would start past the deadline.
    public mutating func wait() -> Bool {
        guard monotonicNanoseconds() + UInt64(delayMilliseconds) * 1_000_000 < deadline else { return false }
        sleepMilliseconds(delayMilliseconds)
        delayMilliseconds = min(delayMilliseconds * 2, 1_000)
        return true
    }
}

/// One loss of the connections to the source, for the report.
public struct Outage: Sendable {
    /// What was noticed: a reset, a close, a silence.
    public var cause: String
    /// Monotonic ns when it was noticed.
    public var detectedAt: UInt64
    /// Until the session was resumed; nil if it never was (the migration then failed).
    public var resumedAfterNanoseconds: UInt64?
    public var attempts = 0
    /// Pages in flight on the lost connections (requested, or pushed and not yet arrived): back
    /// to missing when the session resumed.
    public var pagesInFlight = 0
    /// Pages faults waited on when the session resumed: asked for again at once.
    public var faultsAskedAgain = 0
    /// How long the longest-waiting fault had waited when the session resumed.
    public var longestFaultWaitNanoseconds: UInt64 = 0
}
