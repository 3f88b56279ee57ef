import Histogram
import PagerKernel
import Synchronization

/// Latency summary of a set of samples, in nanoseconds.
public struct LatencySummary: Sendable, CustomStringConvertible {
    public var count: Int
    public var p50: UInt64
    public var p90: UInt64
    public var p99: UInt64
    public var p999: UInt64 = 0
    public var max: UInt64 = 0
    public var mean: Double
    /// (percentile, ns) points of the distribution, for plotting a CDF.
    public var cdf: [(percentile: Double, nanoseconds: UInt64)] = []

    /// Summarises samples (ns) through an HdrHistogram with 3 significant digits (a value is
    /// reported within 0.1% of what was recorded), as latency tools do.
    public init(samples: [UInt64]) {
        var h = Histogram<UInt64>(highestTrackableValue: 3_600_000_000_000, numberOfSignificantValueDigits: .three)
        for s in samples { _ = h.record(Swift.max(1, s)) }
        self.init(histogram: h)
    }

    public init(histogram h: Histogram<UInt64>) {
        count = Int(h.totalCount)
        guard count > 0 else {
            p50 = 0; p90 = 0; p99 = 0; mean = 0
            return
        }
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

    public init(count: Int, p50: UInt64, p90: UInt64, p99: UInt64, mean: Double) {
        self.count = count
        self.p50 = p50
        self.p90 = p90
        self.p99 = p99
        self.mean = mean
    }

    /// A summary printed as `key=value` pairs by another process (`pager-workload run`:
    /// `wait-p50-ns=...`, prefix "wait-"; `raw-client`: `p50-ns=...`): count from `waits`.
    public init(keyValues kv: [String: Double], prefix: String) {
        self.init(count: Int(kv["waits"] ?? 0), p50: UInt64(kv["\(prefix)p50-ns"] ?? 0), p90: UInt64(kv["\(prefix)p90-ns"] ?? 0),
                  p99: UInt64(kv["\(prefix)p99-ns"] ?? 0), mean: 0)
        p999 = UInt64(kv["\(prefix)p999-ns"] ?? 0)
        max = UInt64(kv["\(prefix)max-ns"] ?? 0)
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

    public var description: String {
        "p50 \(formatMicros(p50)) p90 \(formatMicros(p90)) p99 \(formatMicros(p99)) mean \(formatMicros(UInt64(mean)))"
    }
}

/// Formats nanoseconds as microseconds with one decimal.
public func formatMicros(_ ns: UInt64) -> String {
    let tenths = (ns + 50) / 100
    return "\(tenths / 10).\(tenths % 10) µs"
}

/// The local userfaultfd fault cost: one thread touches each page of a MISSING-registered
/// anonymous region in order while a handler thread resolves each fault with one 4 KiB
/// UFFDIO_COPY. The same algorithm as `uffd-fault-bench-c`, through the Swift kernel layer.
public enum LocalFaultBenchmark {
    /// Touches from a thread pinned to `touchCPU` with a handler on `handlerCPU`; the calling
    /// thread is never pinned, so processes it starts later keep every CPU.
    /// Returns per-fault latencies in ns. Checks every page's content afterwards.
    public static func run(pages: Int, touchCPU: Int, handlerCPU: Int) throws -> [UInt64] {
        let missing = try MissingRegion(bytes: pages * basePageSize)
        let uffd = missing.uffd
        let source = UnsafeMutableRawPointer.allocate(byteCount: basePageSize, alignment: basePageSize)
        defer { source.deallocate() }
        source.initializeMemory(as: UInt8.self, repeating: 0x5A, count: basePageSize)
        let sourceAddress = UInt(bitPattern: source)
        let failure = Mutex<KernelError?>(nil)
        let handler = try KernelThread(name: "bench-faults", cpu: handlerCPU) {
            let src = UnsafeRawPointer(bitPattern: sourceAddress)!
            var events: [UffdEvent] = []
            events.reserveCapacity(64)
            var served = 0
            do {
                while served < pages {
                    guard try uffd.waitReadable(timeoutMilliseconds: -1) else { continue }
                    try uffd.readEvents(into: &events)
                    for case .pageFault(let address, _, _) in events {
                        _ = try uffd.copy(to: address & ~UInt64(basePageSize - 1), from: src, length: UInt64(basePageSize))
                        served += 1
                    }
                }
            } catch let error as KernelError {
                failure.withLock { $0 = error }
            } catch {
                failure.withLock { $0 = KernelError("fault loop", .ioError, detail: "\(error)") }
            }
        }
        let base = UInt(bitPattern: missing.memory.base)
        let measured = Mutex<(latencies: [UInt64], sum: Int)>(([], 0))
        let toucher = try KernelThread(name: "bench-touch", cpu: touchCPU) {
            let memory = UnsafeRawPointer(bitPattern: base)!
            var latencies = [UInt64](repeating: 0, count: pages)
            var sum = 0
            for i in 0..<pages {
                let t0 = monotonicNanoseconds()
                sum += Int(memory.load(fromByteOffset: i * basePageSize, as: UInt8.self))
                latencies[i] = monotonicNanoseconds() - t0
            }
            measured.withLock { $0 = (latencies, sum) }
        }
        toucher.join()
        handler.join()
        let (latencies, sum) = measured.withLock { $0 }
        if let error = failure.withLock({ $0 }) { throw error }
        guard sum == pages * 0x5A else { throw BenchmarkError.contentMismatch("local fault benchmark read wrong bytes") }
        return latencies
    }

    /// Runs the C twin (`uffd-fault-bench-c`, built next to this executable) and parses its line.
    public static func runC(pages: Int, touchCPU: Int, handlerCPU: Int) throws -> LatencySummary {
        let path = executableDirectory() + "/uffd-fault-bench-c"
        let (status, output) = try runProgram(path, ["\(pages)", "\(touchCPU)", "\(handlerCPU)"])
        guard status == 0 else { throw BenchmarkError.baselineFailed("\(path) exited with \(status): \(output)") }
        let fields = keyValues(output)
        guard let p50 = fields["p50_ns"], let p90 = fields["p90_ns"], let p99 = fields["p99_ns"], let mean = fields["mean_ns"] else {
            throw BenchmarkError.baselineFailed("unparseable output from \(path): \(output)")
        }
        return LatencySummary(count: pages, p50: UInt64(p50), p90: UInt64(p90), p99: UInt64(p99), mean: mean)
    }
}

/// An anonymous region registered for MISSING faults, already backed by host memory: the
/// region is touched once and dropped (MADV_DONTNEED) first, because on these VMs the first
/// touch of guest memory measures the hypervisor, not us (see DESIGN-NOTES).
struct MissingRegion: ~Copyable {
    let memory: MemoryMapping
    let uffd: Userfaultfd

    init(bytes: Int) throws {
        let region = try MemoryMapping.anonymous(length: bytes)
        for i in stride(from: 0, to: bytes, by: basePageSize) { (region.base + i).storeBytes(of: 1, as: UInt8.self) }
        try region.advise(.dontNeed)
        let u = try Userfaultfd()
        try u.negotiate([])
        try u.register(region.range, mode: .missing)
        uffd = u
        memory = region
    }
}

public enum BenchmarkError: Error, CustomStringConvertible {
    case contentMismatch(String)
    case baselineFailed(String)
    public var description: String {
        switch self {
        case .contentMismatch(let s), .baselineFailed(let s): s
        }
    }
}
