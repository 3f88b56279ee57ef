import Logging
import PagerCore
import PagerKernel
import PagerTransport
import PagerWire
import Synchronization

/// A session's two connections; a resume replaces both.
public struct SessionConnections: Sendable {
    public var demand: any FrameConnection
    public var push: any FrameConnection
    public init(demand: any FrameConnection, push: any FrameConnection) {
        self.demand = demand
        self.push = push
    }
}

/// What resuming a session during pre-copy takes (see ``StagedPages/receive(region:connections:resumption:logger:)``).
public struct PrecopyResumption: Sendable {
    public var resumer: any SessionResumer
    /// Silence on the push connection after which it counts as lost (a PING goes out after
    /// 250 ms of it).
    public var stallTimeoutMilliseconds: Int
    /// How long reconnecting may take before pre-copy fails.
    public var reconnectTimeoutMilliseconds: Int
    public init(resumer: any SessionResumer, stallTimeoutMilliseconds: Int, reconnectTimeoutMilliseconds: Int) {
        self.resumer = resumer
        self.stallTimeoutMilliseconds = stallTimeoutMilliseconds
        self.reconnectTimeoutMilliseconds = reconnectTimeoutMilliseconds
    }
}

extension StagedPages {
    /// Receives the pre-copy rounds of live `region` until SWITCHED (``receiveRounds``). With
    /// `resumption`, a lost or silent push connection is not the end: both connections are
    /// made again (with backoff, within the reconnect window), the staged map goes to the
    /// source as RECEIVED with `staged` (§4.13a), and the rounds go on; `connections` are
    /// the current ones afterwards. Nothing of the workload is here yet, so a pre-copy that
    /// cannot resume loses nothing: the workload still runs on the source.
    public static func receive(region: RegionDescriptor, connections: inout SessionConnections, resumption: PrecopyResumption?,
                               logger: Logger) throws(ResolveError) -> StagedPages {
        let staged = try make(for: region)
        let started = monotonicNanoseconds()
        while true {
            let heard = LastFrame()
            let watch = resumption.map { SilenceWatch(push: connections.push, heard: heard, stallMilliseconds: $0.stallTimeoutMilliseconds) }
            do throws(ResolveError) {
                try staged.receiveRounds(on: connections.push, started: started, heard: heard, logger: logger)
                watch?.stop()
                return staged
            } catch {
                let silent = watch?.stop() ?? false
                guard let resumption, case .channel(let e) = error, e.isConnectionLoss else { throw error }
                let cause: ResolveError = silent ? .sourceSilent(milliseconds: heard.silence / 1_000_000,
                                                                 timeoutMilliseconds: resumption.stallTimeoutMilliseconds) : error
                connections.demand.shutdown()
                connections = try staged.resume(after: cause, resumption, logger: logger)
            }
        }
    }

    /// Makes both connections again and sends the staged map; throws if the source refuses
    /// or the window passes.
    private func resume(after cause: ResolveError, _ resumption: PrecopyResumption, logger: Logger) throws(ResolveError) -> SessionConnections {
        let detected = monotonicNanoseconds()
        outages.append(Outage(cause: cause.cause, detectedAt: detected))
        logger.warning("connection to the source lost during pre-copy (\(cause.cause)): reconnecting for up to \(resumption.reconnectTimeoutMilliseconds / 1000) s; the workload still runs on the source")
        let outcome = resumeSession(resumption.resumer, push: true, stallTimeoutMilliseconds: resumption.stallTimeoutMilliseconds,
                                    since: detected, windowMilliseconds: resumption.reconnectTimeoutMilliseconds,
                                    attemptName: "pre-copy resume attempt", logger: logger) { demand, push, attempts in
            guard let push else { throw ChannelError.closed(peer: demand.peer) }
            for frame in Received.frames(region: region.id, ranges: heldRanges, staged: true, maxPayload: push.sendLimit) {
                try push.send(.received(frame))
            }
            let took = monotonicNanoseconds() - detected
            outages[outages.count - 1].resumedAfterNanoseconds = took
            outages[outages.count - 1].attempts = attempts
            logger.warning("pre-copy resumed after \(milliseconds(took)) ms (\(attempts) attempt(s)); \(stagedBytes >> 20) MiB staged are kept (the source sends again what it cannot know arrived)")
            return SessionConnections(demand: demand, push: push)
        }
        switch outcome {
        case .success(let connections)?: return connections
        case .failure(let error)?: throw error
        case nil: throw .aborted("pre-copy stopped") // not reached: nothing stops a pre-copy resume but its window
        }
    }

    /// The staged pages as byte ranges (RECEIVED's map).
    var heldRanges: [PageRange] {
        present.runs(in: 0..<present.count).map {
            PageRange(offset: UInt64($0.lowerBound * basePageSize), length: UInt64($0.count * basePageSize))
        }
    }
}

/// When the last frame arrived on a connection (monotonic ns).
final class LastFrame: Sendable {
    private let at = Atomic<UInt64>(monotonicNanoseconds())
    func note() { at.store(monotonicNanoseconds(), ordering: .relaxed) }
    /// Nanoseconds since the last frame.
    var silence: UInt64 { monotonicNanoseconds() &- at.load(ordering: .relaxed) }
}

/// Watches a push connection for silence on its own thread: a PING after 250 ms without a
/// frame (the source answers PONG, which counts as a frame), and the connection shut down
/// after the stall timeout, so that the receive fails and a resume begins.
final class SilenceWatch: @unchecked Sendable {
    private let stopped = WaitableState(false)
    private let fired = Atomic<Bool>(false)
    private var thread: KernelThread?

    init(push: any FrameConnection, heard: LastFrame, stallMilliseconds: Int) {
        thread = try? KernelThread(name: "dst-precopy-wd") { [self] in
            var token: UInt64 = 0
            while !stopped.wait(until: { $0 }, deadline: monotonicNanoseconds() + 250_000_000) {
                let silence = heard.silence
                if silence >= UInt64(stallMilliseconds) * 1_000_000 {
                    fired.store(true, ordering: .relaxed)
                    push.shutdown()
                    return
                }
                if silence >= 250_000_000 {
                    token &+= 1
                    try? push.send(.ping(token: token, timestamp: monotonicNanoseconds()))
                }
            }
        }
    }

    /// Stops the watch; returns whether it was the watch that declared the connection lost.
    @discardableResult
    func stop() -> Bool {
        stopped.change { $0 = true }
        thread?.join()
        return fired.load(ordering: .relaxed)
    }
}
