import Synchronization

/// Fault latencies in power-of-two microsecond buckets, counted with relaxed atomics so the
/// fault path never takes a lock for them and a reader (status, metrics) never blocks it.
/// Bucket `k` holds latencies in [2^k, 2^(k+1)) µs (bucket 0 also below 1 µs; the last one
/// everything from 2^32 µs up): the buckets of QEMU's `postcopy-latency-dist`.
public final class LatencyHistogram: Sendable {
    public static let bucketCount = 33
    private let buckets: InlineArray<33, Atomic<UInt64>>
    private let sumNanoseconds = Atomic<UInt64>(0)

    public init() {
        buckets = InlineArray { _ in Atomic(0) }
    }

    /// The bucket of a latency of `nanoseconds`.
    public static func bucket(nanoseconds: UInt64) -> Int {
        let us = nanoseconds / 1000
        guard us > 1 else { return 0 }
        return min(bucketCount - 1, 63 - us.leadingZeroBitCount)
    }

    /// The exclusive upper bound of bucket `k`, in seconds (2^(k+1) µs).
    public static func upperBoundSeconds(_ k: Int) -> Double { Double(UInt64(1) << UInt64(k + 1)) / 1e6 }

    public func record(nanoseconds: UInt64) {
        buckets[LatencyHistogram.bucket(nanoseconds: nanoseconds)].add(1, ordering: .relaxed)
        sumNanoseconds.add(nanoseconds, ordering: .relaxed)
    }

    /// The counts of every bucket now.
    public var counts: [UInt64] { (0..<LatencyHistogram.bucketCount).map { buckets[$0].load(ordering: .relaxed) } }
    public var sumSeconds: Double { Double(sumNanoseconds.load(ordering: .relaxed)) / 1e9 }

    /// The upper bound (µs) of the bucket holding the `q` quantile of `counts`; 0 if empty.
    public static func quantileUpperBoundMicroseconds(_ counts: [UInt64], _ q: Double) -> UInt64 {
        let total = counts.reduce(0, +)
        guard total > 0 else { return 0 }
        let rank = UInt64((Double(total) * q).rounded(.up))
        var seen: UInt64 = 0
        for (k, c) in counts.enumerated() {
            seen += c
            if seen >= max(rank, 1) { return UInt64(1) << UInt64(k + 1) }
        }
        return UInt64(1) << UInt64(counts.count)
    }
}
