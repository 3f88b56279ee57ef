import PagerCore
import PagerKernel
import PagerTransport
import PagerWire

extension PrecopyRounds {
    /// Pauses the writer, scans once more, then finishes the switch (``finishSwitch``). In the
    /// foreground, whoever calls it: all of it is the workload's downtime.
    func startSwitch(_ region: ServedRegion, _ live: LiveRegion, reason: ConvergencePolicy.Reason, rounds: Int, _ link: Link) throws {
        let session = link.session
        // Everything from the pause to SWITCHED is time the workload is stopped. First let the
        // destination take in every frame sent so far (a PING answered on the push connection
        // comes after them), so that after the pause INVALIDATE's answer costs one round trip,
        // not the draining of megabytes of queued round data.
        link.logger.info("session \(hex(session.id)): switching region \(region.id) to post-copy: \(reason)")
        try withForegroundPriority { () throws -> Void in
            let token = UInt64(session.nextSequence())
            session.checkpoint(token: token)
            try link.channel.send(.ping(token: token, timestamp: monotonicNanoseconds()))
            try wait(link, "PING \(token)") { $0.ponged >= token }
            let paused = monotonicNanoseconds()
            do { try live.pause() } catch {
                throw SessionError.refuse(.ioError, "cannot pause the writer of region \(region.id): \(error)")
            }
            let stopped = monotonicNanoseconds()
            // Nothing sent yet (no pre-copy): nothing can be stale, no scan needed.
            let final = rounds == 0 ? [] : region.pages(of: try live.tracker.takeWritten(), memoryBase: region.trackedBase)
            let scanned = monotonicNanoseconds()
            session.markUnsent(region, final)
            let s = Switch(reason: reason, rounds: rounds, pausedAt: paused, stopDuration: stopped - paused,
                           scanDuration: scanned - stopped, finalPages: final.reduce(0) { $0 + $1.count })
            // From here on a lost connection leaves the writer paused for the resume to finish
            // the switch, or for the session's end to let it run again.
            set(region, .paused(s))
            try finishSwitch(region, live, s, link)
        }
    }

    /// INVALIDATEs what the destination may hold stale, waits for the acknowledgement, and
    /// sends SWITCHED; after that the push carries on as post-copy. Made again on a resumed
    /// connection whose map says SWITCHED did not arrive.
    func finishSwitch(_ region: ServedRegion, _ live: LiveRegion, _ s: Switch, _ link: Link) throws {
        try withForegroundPriority { () throws -> Void in
            let invalidating = monotonicNanoseconds()
            let (stalePages, lastSequence) = try invalidateStale(region, link)
            // Recorded before SWITCHED goes out: whoever sees SWITCHED sees this outcome.
            let pause = monotonicNanoseconds() - s.pausedAt
            live.record {
                $0.reason = s.reason
                $0.finalDirtyPages = s.finalPages
                $0.invalidatedPages = stalePages
                $0.pauseNanoseconds = pause
                $0.switched = true
            }
            set(region, .switched(s))
            try link.channel.send(.switched(region: region.id, lastSequence: lastSequence))
            link.logger.info("""
                session \(hex(link.session.id)): region \(region.id) switched to post-copy after \(s.rounds) round(s): \
                final scan found \(s.finalPages) pages written after the last round, \(stalePages) pages invalidated, \
                writer paused for \(pause / 1000) µs before SWITCHED (stopping it \(s.stopDuration / 1000) µs, \
                final scan \(s.scanDuration / 1000) µs, invalidation \((monotonicNanoseconds() - invalidating) / 1000) µs)
                """)
        }
    }

    /// INVALIDATEs the pages of `region` the destination may hold stale (sent at least once,
    /// not known to be there with their latest content: they become missing there and are
    /// fetched again) and waits for the acknowledgement. Returns the pages invalidated and the
    /// last sequence (0: none).
    private func invalidateStale(_ region: ServedRegion, _ link: Link) throws -> (pages: Int, lastSequence: UInt32) {
        let stale = link.session.staleRuns(region)
        let size = UInt64(region.pageSize)
        var lastSequence: UInt32 = 0
        // INVALIDATE frames of at most 4096 ranges (64 KiB of payload).
        for start in stride(from: 0, to: stale.count, by: 4096) {
            let ranges = stale[start..<min(stale.count, start + 4096)].map {
                PageRange(offset: UInt64($0.lowerBound) * size, length: UInt64($0.count) * size)
            }
            lastSequence = link.session.nextSequence()
            try link.channel.send(.invalidate(Invalidate(sequence: lastSequence, region: region.id, ranges: ranges)))
        }
        if lastSequence != 0 {
            try wait(link, "INVALIDATE \(lastSequence)") { $0.acknowledged >= lastSequence }
        }
        return (stale.reduce(0) { $0 + $1.count }, lastSequence)
    }

    /// Waits up to 30 s for the destination's answer (`done`); throws if it does not come, or
    /// if this push connection is lost or replaced meanwhile (a resume takes over then).
    private func wait(_ link: Link, _ what: String, _ done: @escaping (SourceSession.State) -> Bool) throws {
        switch link.session.waitForAnswer(push: link.generation, timeoutMilliseconds: 30_000, done) {
        case .answered: return
        case .connectionGone: throw ChannelError.closed(peer: link.channel.peer)
        case .timedOut: throw SessionError.refuse(.timeout, "the destination did not answer \(what) within 30 s")
        }
    }
}
