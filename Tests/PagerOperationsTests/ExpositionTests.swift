import PagerCore
import PagerOperations
import PagerOperationsCore
import Testing

@Suite("Prometheus text exposition")
struct ExpositionTests {
    @Test("a counter and a gauge with constant labels first, label values escaped, HELP escaped")
    func countersAndGauges() {
        let families = [
            MetricFamily("pager_x_total", .counter, help: "Things \\ counted\nacross lines.", samples: [.init([("region", "a\"b\\c\nd")], 3)]),
            MetricFamily("pager_y", .gauge, help: "A level.", samples: [.init([], 0.25)]),
        ]
        let text = Exposition.write(families, constantLabels: [("role", "dest"), ("domain", "vm1")])
        #expect(text == """
        # HELP pager_x_total Things \\\\ counted\\nacross lines.
        # TYPE pager_x_total counter
        pager_x_total{role="dest",domain="vm1",region="a\\"b\\\\c\\nd"} 3
        # HELP pager_y A level.
        # TYPE pager_y gauge
        pager_y{role="dest",domain="vm1"} 0.25

        """)
    }

    @Test("a histogram: cumulative buckets with le, +Inf equal to the count, _sum and _count")
    func histogram() {
        let h = MetricFamily.HistogramSeries(labels: [("region", "r")], buckets: [(0.000002, 1), (0.000004, 3)], count: 4, sum: 0.5)
        let text = Exposition.write([MetricFamily(histogram: "pager_lat_seconds", help: "h", series: [h])])
        #expect(text.contains("pager_lat_seconds_bucket{region=\"r\",le=\"2e-06\"} 1\n"), "\(text)")
        #expect(text.contains("pager_lat_seconds_bucket{region=\"r\",le=\"4e-06\"} 3\n"))
        #expect(text.contains("pager_lat_seconds_bucket{region=\"r\",le=\"+Inf\"} 4\n"))
        #expect(text.contains("pager_lat_seconds_sum{region=\"r\"} 0.5\n") && text.contains("pager_lat_seconds_count{region=\"r\"} 4\n"))
    }

    @Test("metric and label names are checked against the format's grammar")
    func names() {
        #expect(MetricFamily.isValidName("pager_dest_faults_total") && MetricFamily.isValidName("a:b_c9"))
        #expect(!MetricFamily.isValidName("9x") && !MetricFamily.isValidName("a-b") && !MetricFamily.isValidName(""))
        #expect(MetricFamily.isValidLabelName("domain") && MetricFamily.isValidLabelName("_x1"))
        #expect(!MetricFamily.isValidLabelName("__reserved") && !MetricFamily.isValidLabelName("a:b") && !MetricFamily.isValidLabelName("1a"))
    }
}

@Suite("Fault latency in power-of-two microsecond buckets")
struct LatencyHistogramTests {
    @Test("bucket k holds [2^k, 2^(k+1)) µs; below 2 µs is bucket 0; the last bucket takes the rest")
    func buckets() {
        #expect(LatencyHistogram.bucket(nanoseconds: 0) == 0)
        #expect(LatencyHistogram.bucket(nanoseconds: 1_999) == 0)
        #expect(LatencyHistogram.bucket(nanoseconds: 2_000) == 1)
        #expect(LatencyHistogram.bucket(nanoseconds: 3_999) == 1)
        #expect(LatencyHistogram.bucket(nanoseconds: 100_000) == 6) // 64 <= 100 < 128
        #expect(LatencyHistogram.bucket(nanoseconds: .max) == LatencyHistogram.bucketCount - 1)
        #expect(LatencyHistogram.upperBoundSeconds(6) == 128e-6)
    }

    @Test("counts, sum and quantile bounds from recorded latencies")
    func recordAndQuantiles() {
        let h = LatencyHistogram()
        for _ in 0..<98 { h.record(nanoseconds: 100_000) }
        h.record(nanoseconds: 5_000_000)
        h.record(nanoseconds: 40_000_000)
        let counts = h.counts
        #expect(counts.reduce(0, +) == 100 && counts[6] == 98)
        #expect(abs(h.sumSeconds - (98 * 100e-6 + 0.045)) < 1e-9)
        #expect(LatencyHistogram.quantileUpperBoundMicroseconds(counts, 0.5) == 128)
        #expect(LatencyHistogram.quantileUpperBoundMicroseconds(counts, 0.99) == 8192)
        #expect(LatencyHistogram.quantileUpperBoundMicroseconds(counts, 1) == 65536)
        #expect(LatencyHistogram.quantileUpperBoundMicroseconds([UInt64](repeating: 0, count: 33), 0.5) == 0)
    }
}
