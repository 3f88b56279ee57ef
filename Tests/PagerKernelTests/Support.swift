import Glibc
import PagerKernel
import Synchronization
import Testing

/// Fills `length` bytes at `page` with a pattern unique to (`index`, `seed`).
func fillPattern(_ page: UnsafeMutableRawPointer, length: Int, index: Int, seed: UInt64 = 0) {
    let words = page.bindMemory(to: UInt64.self, capacity: length / 8)
    for w in 0..<length / 8 { words[w] = patternWord(index: index, word: w, seed: seed) }
}

@inline(__always)
func patternWord(index: Int, word: Int, seed: UInt64) -> UInt64 {
    (UInt64(index) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(word) &* 0xBF58_476D_1CE4_E5B9) ^ seed
}

/// Counts words of the page at `page` that differ from the pattern (reading faults it in).
func patternMismatches(_ page: UnsafeRawPointer, length: Int, index: Int, seed: UInt64 = 0) -> Int {
    var bad = 0
    for w in 0..<length / 8 where page.load(fromByteOffset: w * 8, as: UInt64.self) != patternWord(index: index, word: w, seed: seed) {
        bad += 1
    }
    return bad
}

/// A fault handler on its own thread: resolves MISSING faults on `[base, base+length)` by
/// copying the pattern for the faulting page with UFFDIO_COPY, and records every event.
final class PatternFaultHandler: @unchecked Sendable {
    let uffd: Userfaultfd
    let base: UInt64
    let pageSize: Int
    let seed: UInt64
    private let stop = Atomic<Bool>(false)
    private let lock = Mutex<[UffdEvent]>([])
    private var thread: KernelThread?

    init(uffd: Userfaultfd, base: UnsafeRawPointer, pageSize: Int, seed: UInt64 = 0) throws {
        self.uffd = uffd
        self.base = UInt64(UInt(bitPattern: base))
        self.pageSize = pageSize
        self.seed = seed
        thread = try KernelThread(name: "test-faults") { [self] in run() }
    }

    var events: [UffdEvent] { lock.withLock { $0 } }

    private func run() {
        let staging = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: 4096)
        defer { staging.deallocate() }
        var batch: [UffdEvent] = []
        while !stop.load(ordering: .acquiring) {
            guard (try? uffd.waitReadable(timeoutMilliseconds: 20)) == true else { continue }
            try? uffd.readEvents(into: &batch)
            lock.withLock { $0.append(contentsOf: batch) }
            for event in batch {
                guard case .pageFault(let address, let flags, _) = event, !flags.contains(.writeProtect) else { continue }
                let pageStart = address & ~UInt64(pageSize - 1)
                let index = Int((pageStart - base) / UInt64(pageSize))
                fillPattern(staging, length: pageSize, index: index, seed: seed)
                _ = try? uffd.copy(to: pageStart, from: staging, length: UInt64(pageSize))
            }
        }
    }

    func finish() {
        stop.store(true, ordering: .releasing)
        thread?.join()
    }
}

/// True when the tests run as root, which userfaultfd on kernel memory, hugetlbfs pool
/// changes and /proc/PID/pagemap of other processes need here.
let isRoot = getuid() == 0
