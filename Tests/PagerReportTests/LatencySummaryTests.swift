import PagerReport
import Testing

/// `pagerd`'s summaries no longer go through HdrHistogram: exact nearest-rank percentiles.
struct LatencySummaryTests {
    @Test("percentiles are nearest-rank over the samples, whatever their order")
    func nearestRank() {
        var samples = (1...1000).map { UInt64($0) }
        samples.reverse()
        let s = LatencySummary(samples: samples)
        #expect(s.count == 1000)
        #expect((s.p50, s.p90, s.p99, s.p999, s.max) == (500, 900, 990, 999, 1000))
        #expect(s.mean == 500.5)
        #expect(s.cdf.isEmpty, "the daemon's summary carries no CDF")
    }

    @Test("one sample is every percentile; no samples is all zeros")
    func edges() {
        let one = LatencySummary(samples: [42])
        #expect((one.count, one.p50, one.p99, one.p999, one.max, one.mean) == (1, 42, 42, 42, 42, 42))
        let none = LatencySummary(samples: [])
        #expect((none.count, none.p50, none.p90, none.p99, none.max, none.mean) == (0, 0, 0, 0, 0, 0))
    }

    @Test("a small set: p99 of 10 samples is the largest, p50 the 5th")
    func small() {
        let s = LatencySummary(samples: [10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
        #expect((s.p50, s.p90, s.p99) == (50, 90, 100))
    }

    @Test("printed the way pagerd dest's report line reads")
    func printed() {
        let s = LatencySummary(count: 3, p50: 29_450, p90: 58_000, p99: 94_249, mean: 35_300)
        #expect(s.description == "p50 29.5 µs p90 58.0 µs p99 94.2 µs mean 35.3 µs")
        #expect(formatMicros(0) == "0.0 µs")
    }

    @Test("fixed decimals round half away from zero and pad the fraction")
    func decimals() {
        #expect(String(format: 1, 2.04) == "2.0")
        #expect(String(format: 1, 502.04) == "502.0")
        #expect(String(format: 2, 0.5) == "0.50")
        #expect(String(format: 0, 2.5) == "3")
        #expect(String(format: 2, -1.234) == "-1.23")
        #expect(String(format: 2, .infinity) == "inf")
    }
}
