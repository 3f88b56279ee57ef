import PagerHarness
import PagerKernel

/// The dirty-tracking benchmark: `PAGEMAP_SCAN` scan-and-reprotect cost per GiB at several
/// written fractions, the cost of a first write to a write-protected page, and the pause a
/// live migration imposes with pre-copy and without (same region, same run).
public enum DirtyBenchmark {
    public struct ScanCost: Sendable {
        public var writtenFraction: Double
        public var pagesReported: Int
        /// Median over the repetitions, scaled to one GiB.
        public var millisecondsPerGiB: Double
    }

    /// Tracks `bytes` of populated anonymous memory; for each fraction writes that share of
    /// its pages (evenly spread: the most regions per page written) and times one
    /// scan-and-reprotect. Checks that every scan reports exactly the pages written.
    public static func scanCosts(bytes: Int = 1 << 30, fractions: [Double] = [0, 0.01, 0.1, 1], repetitions: Int = 5) throws -> [ScanCost] {
        let memory = try MemoryMapping.anonymous(length: bytes)
        let pages = bytes / basePageSize
        for p in 0..<pages { memory.page(p).storeBytes(of: UInt64(p), as: UInt64.self) }
        let tracker = try WriteTracker(ownRange: memory.range)
        var result: [ScanCost] = []
        for fraction in fractions {
            let step = fraction == 0 ? 0 : max(1, Int((1 / fraction).rounded()))
            var times: [UInt64] = []
            var reported = 0
            for _ in 0..<repetitions {
                if step > 0 { for p in stride(from: 0, to: pages, by: step) { memory.page(p).storeBytes(of: 1, as: UInt64.self) } }
                let t0 = monotonicNanoseconds()
                let written = try tracker.takeWritten()
                times.append(monotonicNanoseconds() - t0)
                reported = written.reduce(0) { $0 + Int($1.length) / basePageSize }
                let expected = step == 0 ? 0 : (pages + step - 1) / step
                guard reported == expected else { throw HarnessError("scan reported \(reported) written pages, \(expected) were written") }
            }
            times.sort()
            result.append(ScanCost(writtenFraction: fraction, pagesReported: reported,
                                   millisecondsPerGiB: Double(times[times.count / 2]) / 1e6 * Double(1 << 30) / Double(bytes)))
        }
        return result
    }

    /// Nanoseconds per first write to a write-protected page (the kernel un-protects it and
    /// marks it written), and per write to the same pages once unprotected (the baseline).
    public static func firstWriteCost(pages: Int = 65_536) throws -> (protected: Double, unprotected: Double) {
        let memory = try MemoryMapping.anonymous(length: pages * basePageSize)
        for p in 0..<pages { memory.page(p).storeBytes(of: UInt64(p), as: UInt64.self) }
        let tracker = try WriteTracker(ownRange: memory.range)
        var t0 = monotonicNanoseconds()
        for p in 0..<pages { memory.page(p).storeBytes(of: 2, as: UInt64.self) }
        let protected = Double(monotonicNanoseconds() - t0) / Double(pages)
        t0 = monotonicNanoseconds()
        for p in 0..<pages { memory.page(p).storeBytes(of: 3, as: UInt64.self) }
        let unprotected = Double(monotonicNanoseconds() - t0) / Double(pages)
        guard try tracker.takeWritten().reduce(0, { $0 + Int($1.length) }) == pages * basePageSize else {
            throw HarnessError("the tracker missed first writes")
        }
        return (protected, unprotected)
    }
}
