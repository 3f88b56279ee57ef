/// What the destination knows about each page of one region, and the decisions that follow:
/// which pages to request, which parts of a reply to install, what to do on a fault.
///
/// States of a page (exactly one at a time):
/// - **missing**: not here, not asked for;
/// - **in flight**: asked for, reply not yet installed;
/// - **resident**: installed (by a reply, a push, or found present);
/// - **discarded**: the workload dropped it (`MADV_DONTNEED`/`REMOVE` event, or `munmap`):
///   its content is now zeros by the kernel's rules, so it must never be filled from the
///   source again. A fault on it is resolved with a zero page.
///
/// Pure and synchronous: no I/O, no clock. The fault thread owns one instance per region.
public struct RegionPages: Sendable {
    public let pageCount: Int
    private(set) var inFlight: PageBitmap
    private(set) var resident: PageBitmap
    private(set) var discarded: PageBitmap

    public init(pageCount: Int) {
        self.pageCount = pageCount
        inFlight = PageBitmap(count: pageCount)
        resident = PageBitmap(count: pageCount)
        discarded = PageBitmap(count: pageCount)
    }

    public enum State: Equatable, Sendable { case missing, inFlight, resident, discarded }

    public func state(of page: Int) -> State {
        if resident.contains(page) { return .resident }
        if discarded.contains(page) { return .discarded }
        if inFlight.contains(page) { return .inFlight }
        return .missing
    }

    public var residentCount: Int { resident.population }
    public var inFlightCount: Int { inFlight.population }
    public var discardedCount: Int { discarded.population }
    /// Pages that still need data from the source (missing or in flight).
    public var outstandingCount: Int { pageCount - resident.population - discarded.population }
    /// Every page is resident or discarded: nothing more will come from the source.
    public var isComplete: Bool { outstandingCount == 0 }

    /// Marks the missing pages of `range` in flight and returns them as runs: the requests to
    /// send. Pages already in flight, resident or discarded are left out, so a page is never
    /// requested twice and a fault on a page already requested sends nothing.
    public mutating func request(_ range: Range<Int>) -> [Range<Int>] {
        let wanted = runs(in: clamp(range), from: firstMissing, while: isMissing)
        for run in wanted { inFlight.insert(run) }
        return wanted
    }

    /// A reply (or push) for `range` arrived: returns the runs to install, the pages that are
    /// neither resident nor discarded, and marks them resident. Late or duplicate data for the
    /// rest is clipped away.
    public mutating func accept(_ range: Range<Int>) -> [Range<Int>] {
        let install = runs(in: clamp(range), from: firstWanted) { !resident.contains($0) && !discarded.contains($0) }
        for run in install {
            resident.insert(run)
            inFlight.remove(run)
        }
        return install
    }

    /// Maximal runs of pages in `r` that satisfy a predicate: `first` finds the next such page
    /// at or after an index (below an end), `continues` tests the pages after it.
    private func runs(in r: Range<Int>, from first: (Int, Int) -> Int?, while continues: (Int) -> Bool) -> [Range<Int>] {
        var result: [Range<Int>] = []
        var i = r.lowerBound
        while i < r.upperBound, let start = first(i, r.upperBound) {
            var end = start + 1
            while end < r.upperBound && continues(end) { end += 1 }
            result.append(start..<end)
            i = end
        }
        return result
    }

    /// The kernel said these pages were present already (`EEXIST`): record them resident.
    public mutating func markResident(_ range: Range<Int>) {
        let r = clamp(range)
        resident.insert(r)
        inFlight.remove(r)
        discarded.remove(r)
    }

    /// The workload dropped these pages (`UFFD_EVENT_REMOVE`, `UNMAP`): they are zeros from now
    /// on and replies in flight for them must not be installed.
    public mutating func discard(_ range: Range<Int>) {
        let r = clamp(range)
        discarded.insert(r)
        resident.remove(r)
        inFlight.remove(r)
    }

    /// A discarded page that faulted was filled with zeros: it is resident (and the workload's
    /// own writes after that must never be overwritten).
    public mutating func zeroFilled(_ range: Range<Int>) {
        markResident(range)
    }

    /// The source said these pages are stale (INVALIDATE): they are missing again, and data
    /// already in flight for them will be re-requested.
    public mutating func invalidate(_ range: Range<Int>) {
        let r = clamp(range)
        resident.remove(r)
        inFlight.remove(r)
    }

    /// A request failed or its connection was lost: its pages are missing again.
    public mutating func requestFailed(_ range: Range<Int>) {
        inFlight.remove(clamp(range))
    }

    /// The connections to the source were replaced (a resume): every page in flight on them
    /// is missing again, except those in `keeping` (in flight from local memory, pre-copy's
    /// staged pages), and is asked for anew. Returns how many went back.
    public mutating func requeueInFlight(keeping: PageBitmap?) -> Int {
        let before = inFlight.population
        if let keeping {
            for run in inFlight.runs(in: 0..<pageCount) {
                _ = inFlight.remove(run)
                for kept in keeping.runs(in: run) { _ = inFlight.insert(kept) }
            }
        } else {
            inFlight = PageBitmap(count: pageCount)
        }
        return before - inFlight.population
    }

    /// Maximal runs of pages the source need not send again: resident, discarded (the
    /// workload dropped them), or in flight from local memory (`staged`). RECEIVED tells a
    /// resumed source these.
    public func heldRuns(staged: PageBitmap?) -> [Range<Int>] {
        var held = resident
        for run in discarded.runs(in: 0..<pageCount) { _ = held.insert(run) }
        for run in staged?.runs(in: 0..<pageCount) ?? [] { _ = held.insert(run) }
        return held.runs(in: 0..<pageCount)
    }

    /// Maximal runs of pages that still need data from the source (missing or in flight).
    public func outstandingRuns() -> [Range<Int>] {
        runs(in: 0..<pageCount, from: firstWanted) { !resident.contains($0) && !discarded.contains($0) }
    }

    /// The first page at or after `from` that is missing, wrapping at the end once: the
    /// background push's next target.
    public func nextMissing(from: Int) -> Int? {
        firstMissing(from, pageCount) ?? firstMissing(0, min(from, pageCount))
    }

    @inline(__always)
    private func isMissing(_ i: Int) -> Bool { !resident.contains(i) && !inFlight.contains(i) && !discarded.contains(i) }

    private func firstMissing(_ from: Int, _ end: Int) -> Int? {
        PageBitmap.firstClearInAll([resident, inFlight, discarded], from: from, below: end)
    }

    private func firstWanted(_ from: Int, _ end: Int) -> Int? {
        PageBitmap.firstClearInAll([resident, discarded], from: from, below: end)
    }

    private func clamp(_ r: Range<Int>) -> Range<Int> {
        max(0, r.lowerBound)..<min(pageCount, max(r.upperBound, max(0, r.lowerBound)))
    }
}
