import Histogram
import PagerKernel
import PagerReport

/// Summaries through HdrHistogram, with a CDF: what the workload and the benchmark kit
/// report and plot. (`pagerd` uses the exact ``LatencySummary/init(samples:)`` instead, so
/// the shipped daemon does not link the histogram library.)
extension LatencySummary {
    /// Summarises samples (ns) through an HdrHistogram with 3 significant digits (a value is
    /// reported within 0.1% of what was recorded), as latency tools do, with its CDF.
    public init(histogramOf samples: [UInt64]) {
        var h = Histogram<UInt64>(highestTrackableValue: 3_600_000_000_000, numberOfSignificantValueDigits: .three)
        for s in samples { _ = h.record(Swift.max(1, s)) }
        self.init(histogram: h)
    }

    public init(histogram h: Histogram<UInt64>) {
        self.init(count: Int(h.totalCount), p50: 0, p90: 0, p99: 0, mean: 0)
        guard count > 0 else { return }
        p50 = h.valueAtPercentile(50)
        p90 = h.valueAtPercentile(90)
        p99 = h.valueAtPercentile(99)
        p999 = h.valueAtPercentile(99.9)
        max = h.max
        mean = h.mean
        var points: [(Double, UInt64)] = []
        for v in h.percentiles(ticksPerHalfDistance: 4) {
            if let last = points.last, last.0 == v.percentileLevelIteratedTo { continue }
            points.append((v.percentileLevelIteratedTo, v.value))
            if v.percentileLevelIteratedTo >= 100 { break }
        }
        cdf = points
    }

    /// The CDF as "percentile ns" lines, for a file another process reads (``readCDF(_:)``).
    public var cdfText: String { cdf.map { "\($0.percentile) \($0.nanoseconds)\n" }.joined() }

    /// Reads a CDF written as ``cdfText``; empty if the file is missing.
    public static func readCDF(_ path: String) -> [(percentile: Double, nanoseconds: UInt64)] {
        ((try? readWholeFile(path)) ?? "").split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard f.count == 2, let p = Double(f[0]), let v = UInt64(f[1]) else { return nil }
            return (p, v)
        }
    }
}
