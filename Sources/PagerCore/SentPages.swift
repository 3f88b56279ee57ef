/// What a source has sent one destination, per region: the pages whose latest content it was
/// sent (answers and push), and, for live regions (pre-copy), the pages it was sent at least
/// once whatever was written since. Pure bookkeeping, no I/O.
///
/// For live regions it also keeps which pages the destination is known to hold current: a
/// page sent is *confirmed* once a PING sent after it (a ``checkpoint(token:)``) is answered
/// (``confirm(upTo:)``), until it is written again. A resume during pre-copy trusts only
/// those of the destination's staged pages (§4.13a): an unconfirmed page it holds may be an
/// older copy, the latest having been lost with the connection.
///
/// A region's maps are made on first use (32 KiB per GiB of 4 KiB pages), and changed in place:
/// copying a map out of the dictionary and back would copy its whole storage on every change.
public struct SentPages: Sendable {
    /// Pages per region.
    private let pageCounts: [UInt32: Int]
    private var sent: [UInt32: PageBitmap] = [:]
    private var everSent: [UInt32: PageBitmap] = [:]
    /// Live regions: pages whose latest copy the destination is known to have received.
    private var confirmed: [UInt32: PageBitmap] = [:]
    /// Live regions: runs sent since the last checkpoint.
    private var sinceCheckpoint: [UInt32: [Range<Int>]] = [:]
    /// Checkpoints not answered yet, oldest first.
    private var checkpoints: [(token: UInt64, runs: [UInt32: [Range<Int>]])] = []

    /// `pageCounts`: how many pages each region served has.
    public init(pageCounts: [UInt32: Int]) { self.pageCounts = pageCounts }

    private func empty(_ region: UInt32) -> PageBitmap {
        PageBitmap(count: pageCounts[region] ?? 0)
    }

    /// Records `pages` of `region` as sent with their latest content.
    public mutating func markSent(_ region: UInt32, _ pages: Range<Int>) {
        let count = pageCounts[region] ?? 0
        sent[region, default: PageBitmap(count: count)].insert(pages)
        everSent[region]?.insert(pages)
        if confirmed[region] != nil, !pages.isEmpty { sinceCheckpoint[region, default: []].append(pages) }
    }

    /// Every page of `region` sent: the destination needs nothing more from it.
    public mutating func markAllSent(_ region: UInt32) {
        markSent(region, 0..<(pageCounts[region] ?? 0))
    }

    /// Starts keeping the pages of (live) `region` sent at least once, from what was sent so
    /// far, and which of them the destination is known to hold current (none yet).
    public mutating func trackEverSent(_ region: UInt32) {
        everSent[region] = sent[region] ?? empty(region)
        confirmed[region] = empty(region)
    }

    /// A PING with `token` goes out after everything sent so far: once its PONG is back
    /// (``confirm(upTo:)``), the pages sent before it are confirmed. False (no checkpoint
    /// kept) if nothing was sent since the last one.
    @discardableResult
    public mutating func checkpoint(token: UInt64) -> Bool {
        guard !sinceCheckpoint.isEmpty else { return false }
        checkpoints.append((token, sinceCheckpoint))
        sinceCheckpoint = [:]
        return true
    }

    /// The PONG for `token` arrived (tokens increase): every checkpoint up to it is answered,
    /// and the pages it covers that are still sent (not written since) are confirmed.
    public mutating func confirm(upTo token: UInt64) {
        while let first = checkpoints.first, first.token <= token {
            checkpoints.removeFirst()
            for (region, runs) in first.runs {
                guard let current = sent[region] else { continue }
                for run in runs {
                    for part in current.runs(in: run) { confirmed[region]?.insert(part) }
                }
            }
        }
    }

    /// Whether `page` of live `region` is confirmed current at the destination.
    public func isConfirmed(_ region: UInt32, _ page: Int) -> Bool {
        confirmed[region]?.contains(page) ?? false
    }

    /// Pages written since they were sent: they count as not sent again (still ever sent).
    public mutating func markUnsent(_ region: UInt32, _ runs: [Range<Int>]) {
        guard sent[region] != nil else { return }
        for r in runs {
            sent[region]?.remove(r)
            confirmed[region]?.remove(r)
        }
    }

    /// A resumed destination holds exactly `held` of `region` (its RECEIVED map): those pages
    /// count as sent, every other as not sent, so the push sends them (again). With `staged`
    /// (a live region in pre-copy, §4.13a) only the held pages also confirmed count as sent:
    /// any other may be an older copy. Pages ever sent stay so (the pages the destination may
    /// hold stale are still known). Returns how many pages counted as sent no longer do: they
    /// are sent again.
    @discardableResult
    public mutating func reset(_ region: UInt32, held: [Range<Int>], staged: Bool = false) -> Int {
        var map = empty(region)
        let trusted = staged ? confirmed[region] : nil
        for run in held {
            if let trusted {
                for part in trusted.runs(in: run) { map.insert(part) }
            } else {
                map.insert(run)
            }
        }
        var lost = sent[region] ?? empty(region)
        for run in map.runs(in: 0..<map.count) { lost.remove(run) }
        sent[region] = map
        // What the old connection sent unanswered is not confirmed; what is held now is.
        if confirmed[region] != nil {
            confirmed[region] = map
            sinceCheckpoint[region] = nil
            checkpoints = checkpoints.map { ($0.token, $0.runs.filter { $0.key != region }) }
        }
        return lost.population
    }

    /// Whether `page` of `region` was sent with its latest content.
    public func isSent(_ region: UInt32, _ page: Int) -> Bool {
        sent[region]?.contains(page) ?? false
    }

    /// Pages the destination holds out of date: sent at least once, not sent since written.
    /// Empty for a region whose ever-sent pages are not tracked.
    public func staleRuns(_ region: UInt32) -> [Range<Int>] {
        guard let ever = everSent[region] else { return [] }
        let current = sent[region] ?? empty(region)
        return ever.runs(in: 0..<ever.count).flatMap { current.clearRuns(in: $0) }
    }

    /// Claims every page of `range` not sent yet and marks it sent: the runs, in order (empty
    /// when all of them were sent).
    public mutating func claimUnsent(_ region: UInt32, in range: Range<Int>) -> [Range<Int>] {
        let count = pageCounts[region] ?? 0
        let clipped = min(range.lowerBound, count)..<min(range.upperBound, count)
        let runs = (sent[region] ?? empty(region)).clearRuns(in: clipped)
        for run in runs { markSent(region, run) }
        return runs
    }

    /// Claims the next run of pages not sent, starting at `from` and wrapping once, at most
    /// `maxPages` long, and marks it sent. Nil when every page was sent.
    public mutating func claimUnsent(_ region: UInt32, from: Int, maxPages: Int) -> Range<Int>? {
        let count = pageCounts[region] ?? 0
        let claimed: Range<Int>? = { (map: inout PageBitmap) in
            guard let start = map.first(false, from: min(from, map.count)) ?? map.first(false, from: 0) else { return nil }
            let end = min(map.first(true, from: start) ?? map.count, start + maxPages)
            map.insert(start..<end)
            return start..<end
        }(&sent[region, default: PageBitmap(count: count)])
        if let claimed {
            everSent[region]?.insert(claimed)
            if confirmed[region] != nil { sinceCheckpoint[region, default: []].append(claimed) }
        }
        return claimed
    }
}

extension PageBitmap {
    /// Maximal runs of clear bits within `range`, in order: the gaps between ``runs(in:)``.
    public func clearRuns(in range: Range<Int>) -> [Range<Int>] {
        var result: [Range<Int>] = []
        var at = range.lowerBound
        for run in runs(in: range) {
            if run.lowerBound > at { result.append(at..<run.lowerBound) }
            at = run.upperBound
        }
        if at < range.upperBound { result.append(at..<range.upperBound) }
        return result
    }
}
