/// Decides how much to fetch around a fault.
///
/// CRIU's lazy-pages grows its background transfer from 64 KiB to 4 MiB while no fault
/// arrives, and fetches exactly one page per fault. This planner also follows the fault
/// stream: when faults walk through memory in one direction (forwards or backwards), the
/// window ahead of the fault doubles on every step in that direction, up to `maxWindow`;
/// a fault that breaks the pattern falls back to `minWindow` pages aligned around it, which
/// keeps random access cheap (one small request) while sequential scans get long reads.
public struct PrefetchPlanner: Sendable {
    public let minWindow: Int
    public let maxWindow: Int
    public private(set) var window: Int
    public private(set) var direction: Direction = .none
    private var lastFault: Int?

    public enum Direction: Equatable, Sendable { case none, forward, backward }

    /// - Parameters: window sizes in pages (e.g. 16 and 1024 for 4 KiB pages: 64 KiB to 4 MiB).
    public init(minWindow: Int = 16, maxWindow: Int = 1024) {
        precondition(minWindow >= 1 && maxWindow >= minWindow)
        self.minWindow = minWindow
        self.maxWindow = maxWindow
        window = minWindow
    }

    /// The pages to fetch for a fault on `page` in a region of `pageCount` pages. The faulting
    /// page is always inside the result and comes first in the returned order of priority:
    /// `urgent` is the part the thread waits for, `ahead` what is worth prefetching.
    public mutating func plan(faultAt page: Int, pageCount: Int) -> (urgent: Range<Int>, ahead: Range<Int>) {
        precondition(page >= 0 && page < pageCount)
        let step = lastFault.map { page - $0 } ?? 0
        // "Near" means within the window just fetched: a scan that touches every page, or every
        // few pages, keeps its direction; a jump elsewhere resets the stream.
        if step > 0 && step <= window && direction != .backward {
            direction = .forward
            window = min(maxWindow, window * 2)
        } else if step < 0 && -step <= window && direction != .forward {
            direction = .backward
            window = min(maxWindow, window * 2)
        } else if step != 0 {
            direction = .none
            window = minWindow
        }
        lastFault = page
        let urgent = page..<page + 1
        switch direction {
        case .forward:
            return (urgent, page + 1..<min(pageCount, page + 1 + window))
        case .backward:
            return (urgent, max(0, page - window)..<page)
        case .none:
            let start = (page / minWindow) * minWindow
            return (urgent, start..<min(pageCount, start + minWindow))
        }
    }
}
