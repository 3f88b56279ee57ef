/// Latency summary of a set of samples, in nanoseconds: what `pagerd` prints after a
/// migration ("fault to install: p50 … p90 … p99 … mean …") and what the benchmarks report.
public struct LatencySummary: Sendable, CustomStringConvertible {
    public var count: Int
    public var p50: UInt64
    public var p90: UInt64
    public var p99: UInt64
    public var p999: UInt64 = 0
    public var max: UInt64 = 0
    public var mean: Double
    /// (percentile, ns) points of the distribution, for plotting a CDF (filled by the
    /// benchmark kit's histogram summary; empty here).
    public var cdf: [(percentile: Double, nanoseconds: UInt64)] = []

    /// Exact percentiles of `samples` (nearest rank: the smallest sample with at least p% of
    /// the samples at or below it), by sorting a copy. The daemon summarises one migration's
    /// faults once, after it ended, so sorting costs nothing the migration sees, and
    /// `pagerd` needs no histogram library for it.
    public init(samples: [UInt64]) {
        count = samples.count
        guard !samples.isEmpty else {
            p50 = 0; p90 = 0; p99 = 0; mean = 0
            return
        }
        let sorted = samples.sorted()
        func at(_ percentile: Double) -> UInt64 {
            // ceil(p/100 * n), rank 1 at the least. 99.9 has no exact binary form: 99.9% of
            // 1000 comes out a hair above 999, which must not round up to rank 1000.
            let exact = percentile / 100 * Double(sorted.count)
            let rank = Swift.max(1, Int((exact - 1e-9).rounded(.up)))
            return sorted[Swift.min(sorted.count, rank) - 1]
        }
        p50 = at(50)
        p90 = at(90)
        p99 = at(99)
        p999 = at(99.9)
        max = sorted[sorted.count - 1]
        mean = sorted.reduce(0.0) { $0 + Double($1) } / Double(sorted.count)
    }

    public init(count: Int, p50: UInt64, p90: UInt64, p99: UInt64, mean: Double) {
        self.count = count
        self.p50 = p50
        self.p90 = p90
        self.p99 = p99
        self.mean = mean
    }

    public var description: String {
        "p50 \(formatMicros(p50)) p90 \(formatMicros(p90)) p99 \(formatMicros(p99)) mean \(formatMicros(UInt64(mean)))"
    }
}

/// Formats nanoseconds as microseconds with one decimal ("29.5 µs").
public func formatMicros(_ ns: UInt64) -> String {
    let tenths = (ns + 50) / 100
    return "\(tenths / 10).\(tenths % 10) µs"
}
