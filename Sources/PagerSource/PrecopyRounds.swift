import Logging
import PagerCore
import PagerKernel
import PagerTransport
import PagerWire

/// The pre-copy rounds of one session's live regions (see ``LiveRegion``): round 0 sends
/// every page, each next round the pages written during the last, until the region's policy
/// says switch; then the switch to post-copy (pause, final scan, INVALIDATE, SWITCHED: see
/// PrecopySwitch.swift).
///
/// It belongs to the session, not to a push connection: a resumed push connection continues
/// the rounds where the lost one left them, with the write tracking untouched (the pages
/// written meanwhile are still recorded), and finishes a switch the lost one began. One push
/// connection at a time uses it: the session's push turn (``SourceSession/takePushTurn(_:)``).
final class PrecopyRounds: @unchecked Sendable {
    /// One pre-copy round in progress on a live region.
    struct Progress {
        var index = 0
        var started: UInt64
        var pages = 0
        var bytes: UInt64 = 0
        /// Data bytes sent since the last checkpoint PING.
        var sinceCheckpoint: UInt64 = 0
        var history: [PrecopyRound] = []
        let precopyStarted = monotonicNanoseconds()
    }

    /// Where a live region stands.
    enum Phase {
        case rounds(Progress)
        /// The writer is stopped and the final scan taken; the INVALIDATE and SWITCHED that
        /// follow are still to be sent (again, after a resume).
        case paused(Switch)
        /// SWITCHED was sent. A staged RECEIVED after it says it was lost: sent again.
        case switched(Switch)
    }

    /// What the switch of a region did so far.
    struct Switch {
        var reason: ConvergencePolicy.Reason
        var rounds: Int
        var pausedAt: UInt64
        var stopDuration: UInt64
        var scanDuration: UInt64
        var finalPages: Int
    }

    /// Data sent between checkpoint PINGs (§4.13a): at most this much of a round is sent
    /// again after a resume in pre-copy, because its arrival was not confirmed.
    static let checkpointBytes: UInt64 = 8 << 20

    let regions: [ServedRegion]
    private var phases: [UInt32: Phase] = [:]
    /// Live regions whose switch waits for the destination's map (a resumed push connection
    /// began while the region was paused or switched: only the map says what to INVALIDATE,
    /// and whether SWITCHED arrived).
    private var awaitingMap: Set<UInt32> = []

    init(regions: [ServedRegion]) {
        self.regions = regions.filter { $0.live != nil }
    }

    /// Whether any region is live.
    var isEmpty: Bool { regions.isEmpty }

    /// The push connection that uses the rounds now, and what it logs with.
    struct Link {
        let channel: any FrameConnection
        let generation: UInt64
        let session: SourceSession
        let logger: Logger
    }

    /// A push connection takes its turn: the first one starts round 0 of every live region
    /// (a region whose policy asks for no pre-copy switches at once); a resumed one finds the
    /// rounds where they were and waits for the map of each region whose switch had begun.
    func begin(_ link: Link) throws {
        for region in regions {
            let live = region.live!
            switch phases[region.id] {
            case nil:
                guard !live.outcome.switched else { continue }
                // Round 0 starts from a clean slate: protect everything, forget earlier writes.
                try live.tracker.protectAll()
                link.session.trackEverSent(region)
                if !live.policy.precopy {
                    try startSwitch(region, live, reason: .noPrecopy, rounds: 0, link)
                    continue
                }
                phases[region.id] = .rounds(Progress(started: monotonicNanoseconds()))
                link.logger.info("session \(hex(link.session.id)): pre-copy of live region \(region.id) begins (round 0: every page)")
            case .rounds:
                link.logger.info("session \(hex(link.session.id)): pre-copy of live region \(region.id) continues on the resumed push connection")
            case .paused, .switched:
                awaitingMap.insert(region.id)
            }
        }
    }

    /// Whether `region` is in a pre-copy round (its pages not all sent means the round goes on).
    func inRound(_ region: ServedRegion) -> Bool {
        if case .rounds = phases[region.id] { return true }
        return false
    }

    /// Whether the push must leave `region` alone for now: its switch waits for the map.
    func isWaiting(_ region: ServedRegion) -> Bool { awaitingMap.contains(region.id) }

    /// The push sent `pages` of `region`, `bytes` of them as data: every
    /// ``checkpointBytes`` a PING goes out, whose PONG confirms what was sent before it.
    func count(_ region: ServedRegion, pages: Int, bytes: UInt64, _ link: Link) throws {
        guard case .rounds(var progress) = phases[region.id] else { return }
        progress.pages += pages
        progress.bytes += bytes
        region.live?.precopyBytesSent.add(bytes, ordering: .relaxed)
        progress.sinceCheckpoint += bytes
        if progress.sinceCheckpoint >= Self.checkpointBytes {
            progress.sinceCheckpoint = 0
            try checkpoint(link)
        }
        phases[region.id] = .rounds(progress)
    }

    /// A PING after everything sent so far; its PONG confirms those pages (SentPages).
    private func checkpoint(_ link: Link) throws {
        let token = UInt64(link.session.nextSequence())
        if link.session.checkpoint(token: token) {
            try link.channel.send(.ping(token: token, timestamp: monotonicNanoseconds()))
        }
    }

    /// The destination's map of `region` arrived on the resumed push connection (`staged`:
    /// it has not seen SWITCHED). Rounds go on from the map; a switch that had begun is made
    /// again; a map that claims a SWITCHED never sent ends the session.
    func mapArrived(_ region: ServedRegion, staged: Bool, _ link: Link) throws {
        guard let live = region.live, let phase = phases[region.id] else { return }
        awaitingMap.remove(region.id)
        switch (phase, staged) {
        case (.rounds, true):
            break
        case (.rounds, false), (.paused, false):
            throw SessionError.refuse(.unexpectedMessage, "RECEIVED for live region \(region.id) without staged, but SWITCHED was never sent for it")
        case (.paused(let s), true), (.switched(let s), true):
            link.logger.info("session \(hex(link.session.id)): the destination has not seen SWITCHED for region \(region.id): the switch is made again")
            try finishSwitch(region, live, s, link)
        case (.switched, false):
            break
        }
    }

    /// Ends the current round of `region` (every page of the round sent): scans for pages
    /// written during it, and either queues them for the next round or switches to post-copy.
    /// Runs in the foreground: the lock it takes is the demand path's, and once the switch
    /// pauses the writer, every microsecond here is the workload's downtime.
    func endRound(_ region: ServedRegion, _ link: Link) throws {
        guard let live = region.live, case .rounds(var progress) = phases[region.id] else { return }
        let switchReason = try withForegroundPriority { () throws -> ConvergencePolicy.Reason? in
            try endRound(region, live, &progress, link)
        }
        if let switchReason {
            try startSwitch(region, live, reason: switchReason, rounds: progress.history.count, link)
        } else {
            phases[region.id] = .rounds(progress)
        }
    }

    private func endRound(_ region: ServedRegion, _ live: LiveRegion, _ progress: inout Progress, _ link: Link) throws -> ConvergencePolicy.Reason? {
        let scanStart = monotonicNanoseconds()
        let written = region.pages(of: try live.tracker.takeWritten(), memoryBase: region.trackedBase)
        let now = monotonicNanoseconds()
        let dirty = written.reduce(0) { $0 + $1.count }
        let round = PrecopyRound(index: progress.index, pagesSent: progress.pages, bytesSent: progress.bytes, dirtyPages: dirty,
                                 dirtyBytes: UInt64(dirty) * UInt64(region.pageSize), scanNanoseconds: now - scanStart,
                                 nanoseconds: now - progress.started)
        progress.history.append(round)
        live.record { $0.rounds.append(round) }
        link.logger.info("""
            session \(hex(link.session.id)): pre-copy round \(round.index) of region \(region.id): sent \(round.pagesSent) pages \
            (\(round.bytesSent >> 20) MiB as data) in \(now - progress.started < 1_000_000 ? "<1" : "\((now - progress.started) / 1_000_000)") ms \
            (\(Int(round.rate) >> 20) MiB/s); scan found \(dirty) pages written, in \((now - scanStart) / 1000) µs
            """)
        link.session.markUnsent(region, written)
        // What the round sent is confirmed by the PONG of this PING (or resent after a resume).
        try checkpoint(link)
        let decision = live.policy.decide(after: progress.history, elapsed: now - progress.precopyStarted, forced: live.isForced)
        guard case .switchToPostcopy(let reason) = decision else {
            progress.index += 1
            progress.started = monotonicNanoseconds()
            progress.pages = 0
            progress.bytes = 0
            return nil
        }
        return reason
    }

    /// The session ended without a resume. A region whose writer was paused but whose
    /// SWITCHED never went out has not moved: its writer runs again. One whose SWITCHED was
    /// sent stays stopped (the destination may run the workload: two copies must never run).
    func sessionEnded(_ session: SourceSession, logger: Logger) {
        for region in regions {
            guard case .paused = phases[region.id], let live = region.live else { continue }
            phases[region.id] = nil
            do {
                if try live.unpause() {
                    logger.warning("session \(hex(session.id)) ended before SWITCHED for region \(region.id): its writer runs again (the migration did not happen)")
                } else {
                    logger.error("session \(hex(session.id)) ended before SWITCHED for region \(region.id): its writer stays paused (it cannot be resumed from here)")
                }
            } catch {
                logger.error("session \(hex(session.id)): the writer of region \(region.id) could not be resumed: \(error)")
            }
        }
    }

    /// Records `phase` for `region` (the switch's steps, PrecopySwitch.swift).
    func set(_ region: ServedRegion, _ phase: Phase) { phases[region.id] = phase }
}
