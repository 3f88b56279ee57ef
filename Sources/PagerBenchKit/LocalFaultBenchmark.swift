import PagerHarness
import PagerKernel
import PagerReport
import Synchronization

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
