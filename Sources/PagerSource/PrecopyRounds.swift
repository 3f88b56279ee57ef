import Logging
import PagerCore
import PagerKernel
import PagerTransport
import PagerWire

/// The pre-copy rounds of one push connection's live regions (see ``LiveRegion``): round 0
/// sends every page, each next round the pages written during the last, until the region's
/// policy says switch; then the switch to post-copy (pause, final scan, INVALIDATE, SWITCHED).
struct PrecopyRounds {
    /// One pre-copy round in progress on a live region.
    private struct Progress {
        var index = 0
        var started: UInt64
        var pages = 0
        var bytes: UInt64 = 0
        var history: [PrecopyRound] = []
        let precopyStarted = monotonicNanoseconds()
    }

    private let session: SourceSession
    private let channel: any FrameConnection
    private let logger: Logger
    /// Live regions in pre-copy, by id; a region leaves when it switches to post-copy.
    private var progress: [UInt32: Progress] = [:]

    /// Starts round 0 of every live region not switched yet (one whose policy asks for no
    /// pre-copy switches at once).
    init(regions: [ServedRegion], session: SourceSession, channel: any FrameConnection, logger: Logger) throws {
        self.session = session
        self.channel = channel
        self.logger = logger
        for region in regions {
            guard let live = region.live, !live.outcome.switched else { continue }
            // Round 0 starts from a clean slate: protect everything, forget earlier writes.
            try live.tracker.protectAll()
            session.trackEverSent(region)
            if !live.policy.precopy {
                try switchToPostcopy(region, live, reason: .noPrecopy, rounds: 0)
                continue
            }
            progress[region.id] = Progress(started: monotonicNanoseconds())
            logger.info("session \(hex(session.id)): pre-copy of live region \(region.id) begins (round 0: every page)")
        }
    }

    /// Whether `region` is in a pre-copy round (its pages not all sent means the round goes on).
    func inRound(_ region: ServedRegion) -> Bool { progress[region.id] != nil }

    /// The push sent `pages` of `region`, `bytes` of them as data.
    mutating func count(_ region: ServedRegion, pages: Int, bytes: UInt64) {
        progress[region.id]?.pages += pages
        progress[region.id]?.bytes += bytes
    }

    /// Ends the current round of `region` (every page of the round sent): scans for pages
    /// written during it, and either queues them for the next round or switches to post-copy.
    /// Runs in the foreground: the lock it takes is the demand path's, and once the switch
    /// pauses the writer, every microsecond here is the workload's downtime.
    mutating func endRound(_ region: ServedRegion) throws {
        guard let live = region.live, var round = progress[region.id] else { return }
        let switched = try withForegroundPriority { () throws -> Bool in try endRound(region, live, &round) }
        progress[region.id] = switched ? nil : round
    }

    private func endRound(_ region: ServedRegion, _ live: LiveRegion, _ progress: inout Progress) throws -> Bool {
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
        try switchToPostcopy(region, live, reason: reason, rounds: progress.history.count)
        return true
    }

    /// Pauses the writer, scans once more, INVALIDATEs what the destination holds stale, waits
    /// for the acknowledgements, and sends SWITCHED. After that the push carries on as
    /// post-copy. In the foreground, whoever calls it: all of it is the workload's downtime.
    private func switchToPostcopy(_ region: ServedRegion, _ live: LiveRegion, reason: ConvergencePolicy.Reason, rounds: Int) throws {
        // Everything from the pause to SWITCHED is time the workload is stopped. First let the
        // destination take in every frame sent so far (a PING answered on the push connection
        // comes after them), so that after the pause INVALIDATE's answer costs one round trip,
        // not the draining of megabytes of queued round data.
        logger.info("session \(hex(session.id)): switching region \(region.id) to post-copy: \(reason)")
        try withForegroundPriority { () throws -> Void in
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
            let (stalePages, lastSequence) = try invalidateStale(region)
            // Recorded before SWITCHED goes out: whoever sees SWITCHED sees this outcome.
            let pause = monotonicNanoseconds() - paused
            let finalPages = final.reduce(0) { $0 + $1.count }
            live.record {
                $0.reason = reason
                $0.finalDirtyPages = finalPages
                $0.invalidatedPages = stalePages
                $0.pauseNanoseconds = pause
                $0.switched = true
            }
            try channel.send(.switched(region: region.id, lastSequence: lastSequence))
            logger.info("""
                session \(hex(session.id)): region \(region.id) switched to post-copy after \(rounds) round(s): \
                final scan found \(finalPages) pages written after the last round, \(stalePages) pages invalidated, \
                writer paused for \(pause / 1000) µs before SWITCHED (stopping it \((stopped - paused) / 1000) µs, \
                final scan \((scanned - stopped) / 1000) µs, invalidation \((paused + pause - scanned) / 1000) µs)
                """)
        }
    }

    /// INVALIDATEs the pages of `region` the destination holds stale (sent at least once, not
    /// with their latest content: they become missing there and are fetched again) and waits
    /// for the acknowledgement. Returns the pages invalidated and the last sequence (0: none).
    private func invalidateStale(_ region: ServedRegion) throws -> (pages: Int, lastSequence: UInt32) {
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
        return (stale.reduce(0) { $0 + $1.count }, lastSequence)
    }
}
