/// What a source has sent one destination, per region: the pages whose latest content it was
/// sent (answers and push), and, for live regions (pre-copy), the pages it was sent at least
/// once whatever was written since. Pure bookkeeping, no I/O.
///
/// A region's maps are made on first use (32 KiB per GiB of 4 KiB pages), and changed in place:
/// copying a map out of the dictionary and back would copy its whole storage on every change.
public struct SentPages: Sendable {
    /// Pages per region.
    private let pageCounts: [UInt32: Int]
    private var sent: [UInt32: PageBitmap] = [:]
    private var everSent: [UInt32: PageBitmap] = [:]

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
    }

    /// Every page of `region` sent: the destination needs nothing more from it.
    public mutating func markAllSent(_ region: UInt32) {
        markSent(region, 0..<(pageCounts[region] ?? 0))
    }

    /// Starts keeping the pages of (live) `region` sent at least once, from what was sent so far.
    public mutating func trackEverSent(_ region: UInt32) {
        everSent[region] = sent[region] ?? empty(region)
    }

    /// Pages written since they were sent: they count as not sent again (still ever sent).
    public mutating func markUnsent(_ region: UInt32, _ runs: [Range<Int>]) {
        guard sent[region] != nil else { return }
        for r in runs { sent[region]?.remove(r) }
    }

    /// A resumed destination holds exactly `held` of `region` (its RECEIVED map): those pages
    /// count as sent, every other as not sent, so the push sends them (again). Pages ever
    /// sent stay so (a live region's stale pages are still known). Returns how many pages
    /// were sent but are not held: lost with the connections, they are sent again.
    @discardableResult
    public mutating func reset(_ region: UInt32, held: [Range<Int>]) -> Int {
        var map = empty(region)
        var lost = sent[region] ?? empty(region)
        for run in held {
            map.insert(run)
            lost.remove(run)
        }
        sent[region] = map
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
        if let claimed { everSent[region]?.insert(claimed) }
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
