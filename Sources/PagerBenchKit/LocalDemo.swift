import PagerCore
import PagerKernel
import Synchronization

/// A self-contained demonstration that the kernel layer and the page bookkeeping resolve
/// real faults: a "source" memfd filled with known content (one page in eight left zero),
/// an anonymous "destination" region registered with userfaultfd, a pager thread that
/// resolves faults (copying the faulting page plus a prefetch window, or mapping the zero
/// page) and pushes the rest in the background while a workload reads and writes the
/// destination in random order. Every page is verified at the end.
///
/// Both sides are in this process; `pagerd source` / `pagerd dest` do the same across a network.
public struct LocalDemo {
    public var pages: Int
    public var seed: UInt64

    public init(megabytes: Int, seed: UInt64 = 1) {
        pages = megabytes * (1 << 20) / basePageSize
        self.seed = seed
    }

    public struct Report: Sendable {
        public var pages: Int
        public var faults: Int
        public var copiedPages: Int
        public var zeroPages: Int
        public var pushedPages: Int
        /// Latency of the workload's touches that waited for a page (over 2 µs: reading a
        /// resident page takes about 0.1 µs here, the cheapest fault about 4 µs). Many fault
        /// events are resolved by a push already in flight and never make the workload wait.
        public var waitingTouches: LatencySummary
        public var seconds: Double
        public var mismatches: Int
        public var writesKept: Bool
    }

    /// Page content: 64-bit words derived from the page index; every 8th page is all zero.
    @inline(__always)
    static func word(page: Int, word: Int) -> UInt64 {
        page % 8 == 7 ? 0 : (UInt64(page) &* 0x9E37_79B9_7F4A_7C15) ^ UInt64(word) ^ 0xA5A5_0000_0000_0000
    }

    public func run(log: (String) -> Void) throws -> Report {
        let length = pages * basePageSize
        let sourceFile = try MemoryFile(memfdNamed: "pager-demo-source", length: length)
        let source = try MemoryMapping.map(sourceFile, length: length)
        for p in 0..<pages where p % 8 != 7 {
            let words = source.page(p).assumingMemoryBound(to: UInt64.self)
            for w in 0..<basePageSize / 8 { words[w] = LocalDemo.word(page: p, word: w) }
        }
        let destination = try MemoryMapping.anonymous(length: length)
        let uffd = try Userfaultfd()
        let features = try uffd.negotiate([.eventRemove, .eventUnmap])
        try uffd.register(destination.range, mode: .missing)
        log("source: memfd of \(length >> 20) MiB (\(pages) pages, one in eight zero); destination registered with userfaultfd (features \(features))")

        let base = UInt64(UInt(bitPattern: destination.base))
        let sourceBase = UInt(bitPattern: source.base)
        let pageCount = pages
        let stop = Atomic<Bool>(false)
        let counters = Mutex<(faults: Int, copied: Int, zero: Int, pushed: Int, error: String?)>((0, 0, 0, 0, nil))

        let pager = try KernelThread(name: "demo-pager") {
            let src = UnsafeRawPointer(bitPattern: sourceBase)!
            var state = RegionPages(pageCount: pageCount)
            var planner = PrefetchPlanner(minWindow: 16, maxWindow: 1024)
            var events: [UffdEvent] = []
            var pushCursor = 0
            var local = (faults: 0, copied: 0, zero: 0, pushed: 0)
            /// Installs the wanted runs of `range`, zero pages with ZEROPAGE, others with COPY.
            func install(_ range: Range<Int>, push: Bool) throws(KernelError) {
                for run in state.request(range) {
                    var p = run.lowerBound
                    while p < run.upperBound {
                        let isZero = p % 8 == 7
                        var end = p + 1
                        while end < run.upperBound && (end % 8 == 7) == isZero { end += 1 }
                        let dst = base + UInt64(p * basePageSize)
                        let len = UInt64((end - p) * basePageSize)
                        let outcome = isZero
                            ? try uffd.zeroPage(AddressRange(start: dst, length: len))
                            : try uffd.copy(to: dst, from: src + p * basePageSize, length: len)
                        switch outcome {
                        case .installed, .alreadyPresent: break
                        case .retry(let done):
                            // Part went in; the rest goes back to missing and is retried later.
                            let installedPages = Int(done) / basePageSize
                            state.requestFailed(p + installedPages..<end)
                            end = p + installedPages
                        case .targetGone:
                            throw KernelError("UFFDIO_COPY", .noSuchProcess, detail: "destination went away")
                        }
                        _ = state.accept(p..<end)
                        if isZero { local.zero += end - p } else { local.copied += end - p }
                        if push { local.pushed += end - p }
                        p = max(end, p + 1)
                    }
                }
            }
            do {
                while !stop.load(ordering: .acquiring) && !state.isComplete {
                    // Faults first; when none is pending, push the next 256 missing pages.
                    if try uffd.waitReadable(timeoutMilliseconds: 0) {
                        try uffd.readEvents(into: &events)
                        for event in events {
                            switch event {
                            case .pageFault(let address, _, _):
                                local.faults += 1
                                let page = Int((address - base) / UInt64(basePageSize))
                                let plan = planner.plan(faultAt: page, pageCount: pageCount)
                                try install(plan.urgent, push: false)
                                try install(plan.ahead, push: false)
                            case .remove(let start, let end), .unmap(let start, let end):
                                let lo = Int((max(start, base) - base) / UInt64(basePageSize))
                                let hi = Int((min(end, base + UInt64(pageCount * basePageSize)) - base) / UInt64(basePageSize))
                                if lo < hi { state.discard(lo..<hi) }
                            default: break
                            }
                        }
                    } else if let next = state.nextMissing(from: pushCursor) {
                        try install(next..<min(pageCount, next + 256), push: true)
                        pushCursor = next + 256
                    }
                }
                try uffd.unregister(AddressRange(start: base, length: UInt64(pageCount * basePageSize)))
            } catch {
                counters.withLock { $0.error = "\(error)" }
            }
            counters.withLock { $0 = (local.faults, local.copied, local.zero, local.pushed, $0.error) }
        }

        // The workload: read each page once in a random order, timing each first touch, and
        // write a marker into some pages (those writes must survive the background push).
        var rng = seed | 1
        var order = Array(0..<pages)
        for i in stride(from: pages - 1, to: 0, by: -1) {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
            order.swapAt(i, Int(rng % UInt64(i + 1)))
        }
        let started = monotonicNanoseconds()
        var latencies: [UInt64] = []
        latencies.reserveCapacity(pages)
        var written: [Int] = []
        for (n, p) in order.enumerated() {
            let t0 = monotonicNanoseconds()
            _ = touch(destination.page(p) + 8)
            latencies.append(monotonicNanoseconds() - t0)
            if n % 97 == 0 {
                destination.page(p).storeBytes(of: 0xFEED_FACE_0000_0000 | UInt64(p), toByteOffset: 0, as: UInt64.self)
                written.append(p)
            }
        }
        pager.join()
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        let c = counters.withLock { $0 }
        if let error = c.error { throw BenchmarkError.contentMismatch("pager thread failed: \(error)") }

        // Verify every word of every page (the written word of written pages is the marker).
        var mismatches = 0
        let writtenSet = Set(written)
        var writesKept = true
        for p in 0..<pages {
            let words = destination.page(p).assumingMemoryBound(to: UInt64.self)
            for w in 0..<basePageSize / 8 {
                let expected = (w == 0 && writtenSet.contains(p)) ? 0xFEED_FACE_0000_0000 | UInt64(p) : LocalDemo.word(page: p, word: w)
                if words[w] != expected {
                    mismatches += 1
                    if w == 0 && writtenSet.contains(p) { writesKept = false }
                }
            }
        }
        stop.store(true, ordering: .releasing)
        return Report(pages: pages, faults: c.faults, copiedPages: c.copied, zeroPages: c.zero, pushedPages: c.pushed,
                      waitingTouches: LatencySummary(samples: latencies.filter { $0 > 2000 }), seconds: seconds, mismatches: mismatches,
                      writesKept: writesKept)
    }
}
