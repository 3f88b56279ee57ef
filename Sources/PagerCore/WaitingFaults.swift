/// The destination's book of faults the workload waits on: since when each page is waited
/// for, which pages were asked for urgently (on the demand channel), and the periodic review
/// that decides which waits need a (new) urgent request. Pure: the clock is passed in.
public struct WaitingFaults: Sendable {
    /// First fault time (monotonic ns) per waited-on page.
    private var since: [Int: UInt64] = [:]
    /// Pages asked for on the demand channel. A fault on a page asked for only as prefetch
    /// (queued behind push data) may need asking again, urgently.
    private var urgent: PageBitmap

    /// A fault on a prefetch-only page is escalated to urgent after waiting this long while the
    /// push channel has been silent this long (1 ms): on a host whose CPUs are all busy the
    /// background push, which answers prefetch, may not run at all.
    public var escalateAfterNanoseconds: UInt64 = 1_000_000

    public init(pageCount: Int) { urgent = PageBitmap(count: pageCount) }

    public var isEmpty: Bool { since.isEmpty }
    public var count: Int { since.count }

    /// Records a fault on `page` at `now` (a repeated fault keeps the first time).
    public mutating func note(page: Int, at now: UInt64) {
        if since[page] == nil { since[page] = now }
    }

    /// Whether a fault waits on a page of `run`.
    public func waits(on run: Range<Int>) -> Bool { !since.isEmpty && run.contains { since[$0] != nil } }

    /// The pages of `run` arrived at `now`: their waits end; returns each wait's length in ns.
    public mutating func settle(_ run: Range<Int>, at now: UInt64) -> [UInt64] {
        guard !since.isEmpty else { return [] }
        return run.compactMap { p in since.removeValue(forKey: p).map { now &- $0 } }
    }

    /// The pages of `range` no longer exist for the workload (removed or unmapped).
    public mutating func forget(_ range: Range<Int>) {
        guard !since.isEmpty else { return }
        for p in range { since[p] = nil }
    }

    public func askedUrgently(_ page: Int) -> Bool { urgent.contains(page) }
    public mutating func markUrgent(_ run: Range<Int>) { urgent.insert(run) }
    /// The connections were replaced (a resume): no request is outstanding on the new ones.
    public mutating func forgetUrgent() { urgent = PageBitmap(count: urgent.count) }
    /// How long the oldest wait has lasted at `now` (0 when none waits).
    public func longestWait(now: UInt64) -> UInt64 {
        since.values.min().map { now > $0 ? now - $0 : 0 } ?? 0
    }

    /// What the review of the waiting faults decided.
    public struct Review: Equatable, Sendable {
        /// Waited-on pages that went back to missing (a retried install): ask again, urgently.
        public var missingAgain: [Int] = []
        /// Waited-on prefetch-only pages to ask for urgently now (escalation).
        public var escalate: [Int] = []
        /// Some wait on a prefetch-only page is not escalated yet: review again soon.
        public var slow = false

        public init() {}
    }

    /// One pass over the waits. `lastPushFrame` is when the push channel last delivered a frame
    /// (while push frames keep arriving, a prefetched page is on its way); `staged` says which
    /// pages are in flight from local memory (pre-copy), never worth an urgent request.
    public func review(_ pages: RegionPages, now: UInt64, lastPushFrame: UInt64, staged: (Int) -> Bool) -> Review {
        var review = Review()
        let pushStalled = now > lastPushFrame && now - lastPushFrame > escalateAfterNanoseconds
        for (page, t) in since {
            switch pages.state(of: page) {
            case .missing:
                review.missingAgain.append(page)
            case .inFlight where !urgent.contains(page) && !staged(page):
                if now > t && now - t > escalateAfterNanoseconds && pushStalled {
                    review.escalate.append(page)
                } else {
                    review.slow = true
                }
            default:
                break
            }
        }
        review.missingAgain.sort()
        review.escalate.sort()
        return review
    }
}
