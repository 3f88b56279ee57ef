import PagerKernel
import PagerReport
import SystemPackage

/// The content migration tests put in a source file, and the checks a workload makes on its
/// copy. Per 4 KiB page `p` of the standard layout: pages with p % 16 == 15 are holes (never
/// written: the source sends them as zero ranges from SEEK_HOLE), pages with p % 16 == 7 are
/// written with zeros (found zero by content), every other page holds words derived from
/// (p, word, seed). Other layouts serve the benchmark's hole comparison.
public enum MigrationPattern {
    /// Where the holes and zero pages are.
    public enum Layout: String, CaseIterable, Sendable {
        /// Every 16th page a hole, every 16th (offset by 8) written with zeros.
        case standard
        /// Every page holds data.
        case dense
        /// Every 7th page (p % 7 == 6) a hole, every other page data.
        case holesEvery7 = "holes-every-7"

        /// Page `p` is never written (a hole in the file).
        @inline(__always)
        public func isHole(_ p: Int) -> Bool {
            switch self {
            case .standard: p % 16 == 15
            case .dense: false
            case .holesEvery7: p % 7 == 6
            }
        }

        /// Page `p` reads as zeros (a hole, or written with zeros).
        @inline(__always)
        public func isZero(_ p: Int) -> Bool { isHole(p) || (self == .standard && p % 16 == 7) }
    }

    @inline(__always)
    public static func word(page: Int, word: Int, seed: UInt64, layout: Layout = .standard) -> UInt64 {
        layout.isZero(page) ? 0 : (UInt64(page) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(word) &* 0xD6E8_FEB8_6659_FD93) ^ seed
    }

    /// The marker a workload writes into word 0 of a page it modifies.
    @inline(__always)
    public static func marker(page: Int) -> UInt64 { 0x5752_4954_0000_0000 | UInt64(page) }

    /// Creates (or truncates) `path` with `bytes` of the pattern, leaving the holes unwritten.
    public static func fill(path: String, bytes: Int, seed: UInt64, layout: Layout = .standard) throws {
        let file = try MemoryFile(path: path, length: 0, create: true)
        let size = try file.size()
        if size != 0 { throw KernelError("fill", .fileExists, detail: "\(path) could not be truncated") }
        _ = try MemoryFile(path: path, length: bytes)
        let mapping = try MemoryMapping.map(file, length: bytes)
        let pages = bytes / basePageSize
        for p in 0..<pages where !layout.isHole(p) {
            let words = mapping.page(p * basePageSize / mapping.pageSize).advanced(by: (p * basePageSize) % mapping.pageSize)
                .assumingMemoryBound(to: UInt64.self)
            for w in 0..<basePageSize / 8 { words[w] = word(page: p, word: w, seed: seed, layout: layout) }
        }
    }
}

/// A workload whose memory is paged in by `pagerd dest`.
public struct MigrationWorkload {
    public enum Backing: String, CaseIterable, Sendable { case anon, shm, hugetlb }
    public enum Access: String, CaseIterable, Sendable {
        case sequential, random, strided
        /// Touch nothing: wait until the pager has made all memory local (it closes the handoff
        /// connection then), which times a full background transfer.
        case none
        /// Touch a random tenth of the pages five times over (a hot working set), then wait
        /// until the rest has arrived in the background.
        case workingSet = "working-set"
    }

    public var bytes: Int
    public var backing: Backing
    public var access: Access
    public var seed: UInt64
    /// The source file's layout of holes and zero pages (``MigrationPattern/Layout``).
    public var layout = MigrationPattern.Layout.standard
    /// Every `writeEvery`-th page touched is also written (0: none).
    public var writeEvery: Int
    /// Touch only this many pages (in access order), and verify only those; nil: all.
    public var touchPages: Int?
    /// Drop every `discardEvery`-th page with MADV_DONTNEED (anonymous memory only): half of
    /// them before they are touched, half after; all must then read as zeros (0: none).
    public var discardEvery = 0
    /// Before touching, hint the pager to prefetch the first `hintBytes` and wait until it
    /// says they are local (0: no hint).
    public var hintBytes = 0
    /// Shared memory only: after touching, punch a hole in the backing memfd at every
    /// `punchEvery`-th page (no userfaultfd event is sent for that); those pages must then
    /// read as zeros, and touching them again must not hang (0: none).
    public var punchEvery = 0
    /// Expected digest of every page (``PageDigest``), e.g. of a live source's final memory;
    /// nil: the pages must hold ``MigrationPattern``.
    public var expectedDigests: [UInt64]?
    /// Tests only: send a handoff the pager must refuse (no `offset`, no `page_size`), with the
    /// userfaultfd attached, and touch the memory anyway.
    public var malformedHandoff = false
    /// With access `.none`: once the pager has closed the handoff connection (it is done, or it
    /// failed), say where every page stands before any missing one is read (tests of failed
    /// migrations: every page must be present with its data, or poisoned; none may be neither,
    /// which would read as zeros).
    public var onPagerGone: ((Residency) -> Void)?

    public init(bytes: Int, backing: Backing, access: Access, seed: UInt64, writeEvery: Int, touchPages: Int? = nil) {
        self.touchPages = touchPages
        self.bytes = bytes
        self.backing = backing
        self.access = access
        self.seed = seed
        self.writeEvery = writeEvery
    }

    public struct Result: Sendable {
        public var pages: Int
        public var mismatches: Int
        public var firstMismatch: String?
        public var seconds: Double
        public var waits: LatencySummary
    }

    /// Maps the memory, hands its userfaultfd to the pager at `socketPath`, touches every
    /// page in the chosen order (writing to some), then checks every word of every page.
    public func run(socketPath: String) throws -> Result {
        let memory = try mapAndHandOff(socketPath: socketPath)
        defer { try? memory.socket.close() }
        let pages = bytes / basePageSize
        var order = accessOrder(pages: pages)
        let started = monotonicNanoseconds()
        if access == .none {
            // The pager closes the handoff connection once every page is local.
            while try !UnixSocket.receive(memory.socket, maxBytes: 1, maxDescriptors: 0).bytes.isEmpty {}
            order = []
            if let onPagerGone { onPagerGone(try residency(memory)) }
        }
        if hintBytes > 0 { try hint(memory) }
        if let touchPages { order = Array(order.prefix(touchPages)) }
        let touched = try touchAll(memory, order: order)
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        let (mismatches, first) = verify(memory, touched, pages: touchPages == nil ? Array(0..<pages) : order)
        return Result(pages: touchPages == nil ? pages : order.count, mismatches: mismatches, firstMismatch: first, seconds: seconds,
                      waits: LatencySummary(histogramOf: touched.waits))
    }

    /// The workload's memory (and its memfd, for shared memory) and the connection it was
    /// handed to the pager on.
    struct HandedOff: ~Copyable {
        let mapping: MemoryMapping
        let backingFile: MemoryFile?
        let socket: FileDescriptor
        var base: UnsafeMutableRawPointer { mapping.base }
    }

    /// What touching did: the waits timed, the pages written (and their first word before),
    /// the pages dropped (which must read as zeros).
    struct Touched {
        var waits: [UInt64] = []
        var written = Set<Int>()
        var originalWord0: [Int: UInt64] = [:]
        var discarded = Set<Int>()
    }

    /// Maps the memory, registers it with a new userfaultfd and sends both to the pager.
    func mapAndHandOff(socketPath: String) throws -> HandedOff {
        let pageSize = backing == .hugetlb ? hugePageSize : basePageSize
        let memory: MemoryMapping
        let features: Userfaultfd.Features
        var backingFile: MemoryFile?
        switch backing {
        case .anon:
            memory = try MemoryMapping.anonymous(length: bytes)
            features = [.eventRemove, .eventUnmap]
        case .shm:
            let file = try MemoryFile(memfdNamed: "workload", length: bytes)
            backingFile = file
            memory = try MemoryMapping.map(file, length: bytes)
            features = [.missingShmem, .eventRemove, .eventUnmap]
        case .hugetlb:
            memory = try MemoryMapping.map(try MemoryFile(memfdNamed: "workload", length: bytes, hugetlb: true), length: bytes)
            features = [.missingHugetlbfs, .eventRemove, .eventUnmap]
        }
        let uffd = try Userfaultfd()
        try uffd.negotiate(features)
        try uffd.register(memory.range, mode: .missing)
        // The handoff, in Firecracker's format, written here by hand rather than with the
        // pager's own encoder, so the test exercises the format and not our round trip.
        let json = malformedHandoff ? "[{\"base_host_virt_addr\":\(UInt(bitPattern: memory.base)),\"size\":\(bytes)}]"
            : "[{\"base_host_virt_addr\":\(UInt(bitPattern: memory.base)),\"size\":\(bytes),\"offset\":0,\"page_size\":\(pageSize)}]"
        let socket = try UnixSocket.connect(path: socketPath)
        do {
            try uffd.withUnsafeDescriptor { fd in try UnixSocket.send(socket, bytes: Array(json.utf8), descriptors: [fd]) }
        } catch {
            try? socket.close()
            throw error
        }
        return HandedOff(mapping: memory, backingFile: backingFile, socket: socket)
    }

    /// Where the pages of the memory stand (`PAGEMAP_SCAN`), and whether the present ones hold
    /// the pattern: reads present pages only, so it never faults.
    public struct Residency: Sendable {
        public var present = 0
        /// Present pages whose content is not the source's.
        public var mismatches = 0
        /// Not present, with a marker in the page table: poisoned (`UFFDIO_POISON`), which
        /// PAGEMAP_SCAN reports as swapped (this counts swapped-out pages too, on a host with swap).
        public var poisoned = 0
        /// Neither present nor marked: with the pager gone, such a page reads as zeros.
        public var absent = 0
    }

    func residency(_ memory: borrowing HandedOff) throws -> Residency {
        var r = Residency()
        let scanner = try PagemapScanner()
        let range = memory.mapping.range
        var cursor = range.start
        while cursor < range.end {
            let (regions, walkEnd) = try scanner.scanOnce(AddressRange(start: cursor, length: range.end - cursor),
                                                          anyOf: [.present, .swapped], report: [.present, .swapped])
            for region in regions {
                let start = max(region.range.start, cursor)
                guard start < region.range.end else { continue }
                let first = Int(start - range.start) / basePageSize, end = Int(region.range.end - range.start) / basePageSize
                if region.categories.contains(.present) {
                    r.present += end - first
                    for p in first..<end where !holdsPattern(memory, page: p) { r.mismatches += 1 }
                } else {
                    r.poisoned += end - first
                }
                cursor = region.range.end
            }
            // As in PagemapScanner.writtenRanges: a short answer means the walk covered the range.
            if regions.count < 512 || walkEnd <= cursor { break }
            cursor = walkEnd
        }
        r.absent = bytes / basePageSize - r.present - r.poisoned
        return r
    }

    private func holdsPattern(_ memory: borrowing HandedOff, page p: Int) -> Bool {
        let words = (memory.base + p * basePageSize).assumingMemoryBound(to: UInt64.self)
        return (0..<basePageSize / 8).allSatisfy { words[$0] == MigrationPattern.word(page: p, word: $0, seed: seed, layout: layout) }
    }

    /// The order pages are first touched in.
    func accessOrder(pages: Int) -> [Int] {
        func shuffle(_ a: inout [Int], _ x: inout UInt64) {
            for i in stride(from: a.count - 1, to: 0, by: -1) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                a.swapAt(i, Int(x % UInt64(i + 1)))
            }
        }
        var x = seed | 1
        switch access {
        case .sequential, .none:
            return Array(0..<pages)
        case .random:
            var order = Array(0..<pages)
            shuffle(&order, &x)
            return order
        case .strided:
            let step = 67 // pages: a prime, so every page is visited once
            var order: [Int] = []
            order.reserveCapacity(pages)
            for start in 0..<step { order += stride(from: start, to: pages, by: step) }
            return order
        case .workingSet:
            var set = Array(0..<pages)
            shuffle(&set, &x)
            set = Array(set.prefix(Swift.max(1, pages / 10)))
            var order: [Int] = []
            for _ in 0..<5 {
                shuffle(&set, &x)
                order += set
            }
            return order
        }
    }

    /// Asks the pager to prefetch the first `hintBytes` and waits for its "prefetched" answer.
    func hint(_ memory: borrowing HandedOff) throws {
        let hint = "{\"prefetch\":{\"base_host_virt_addr\":\(UInt(bitPattern: memory.base)),\"size\":\(hintBytes)}}\n"
        try UnixSocket.send(memory.socket, bytes: Array(hint.utf8), descriptors: [])
        var reply: [UInt8] = []
        while !reply.contains(0x0A) {
            let got = try UnixSocket.receive(memory.socket, maxBytes: 4096, maxDescriptors: 0)
            if got.bytes.isEmpty { throw WorkloadError("the pager closed the connection instead of answering the prefetch hint") }
            reply += got.bytes
        }
        guard String(decoding: reply, as: UTF8.self).contains("\"prefetched\"") else {
            throw WorkloadError("unexpected answer to the prefetch hint: \(String(decoding: reply, as: UTF8.self))")
        }
    }

    /// Touches the pages of `order` (timing each wait over 2 µs), writes the marker into some,
    /// drops and punches the pages the options say, and waits for the rest where asked.
    func touchAll(_ memory: borrowing HandedOff, order: [Int]) throws -> Touched {
        var t = Touched()
        let pages = bytes / basePageSize
        // Pages the workload drops: by the kernel's rules anonymous memory reads as zeros after
        // MADV_DONTNEED, so the pager must never fill them from the source afterwards.
        if discardEvery > 0 {
            precondition(backing == .anon, "discarding is checked on anonymous memory only")
            for p in stride(from: discardEvery / 2, to: pages, by: 2 * discardEvery) {
                try memory.mapping.advise(.dontNeed, offset: p * basePageSize, length: basePageSize)
                t.discarded.insert(p)
            }
        }
        for (n, p) in order.enumerated() {
            let page = memory.base + p * basePageSize
            let t0 = monotonicNanoseconds()
            _ = touch(page + 8)
            let dt = monotonicNanoseconds() - t0
            if dt > 2000 { t.waits.append(dt) }
            if writeEvery > 0 && n % writeEvery == 0 {
                t.originalWord0[p] = page.load(as: UInt64.self)
                page.storeBytes(of: MigrationPattern.marker(page: p), as: UInt64.self)
                t.written.insert(p)
            }
        }
        if discardEvery > 0 {
            // The other half: pages dropped after they were touched (and maybe written).
            for p in stride(from: discardEvery / 2 + discardEvery, to: pages, by: 2 * discardEvery) {
                try memory.mapping.advise(.dontNeed, offset: p * basePageSize, length: basePageSize)
                t.discarded.insert(p)
                t.written.remove(p)
            }
        }
        if access == .workingSet {
            // The rest arrives in the background; the pager closes the connection when all is local.
            while try !UnixSocket.receive(memory.socket, maxBytes: 1, maxDescriptors: 0).bytes.isEmpty {}
        }
        if punchEvery > 0 {
            precondition(backing == .shm, "hole punching is checked on shared memory only")
            // Only pages already touched (installed): a hole punched in a page that never arrived
            // is a conflicting write the pager cannot see, not a case it can get right.
            for p in stride(from: punchEvery / 2, to: order.count, by: punchEvery).map({ order[$0] }) {
                try memory.backingFile!.punchHole(offset: p * basePageSize, length: basePageSize)
                t.discarded.insert(p)
                t.written.remove(p)
                _ = touch(memory.base + p * basePageSize) // faults again: must not hang, must read zeros
            }
        }
        return t
    }

    /// Checks `pages`: against the source's digests when given, else word by word against
    /// the pattern. Returns the count of mismatches and the first one, described.
    func verify(_ memory: borrowing HandedOff, _ t: Touched, pages: [Int]) -> (Int, String?) {
        var mismatches = 0
        var first: String?
        func mismatch(_ what: @autoclosure () -> String) {
            mismatches += 1
            if first == nil { first = what() }
        }
        if let expectedDigests {
            for p in pages {
                // Compare with the source's final memory: written pages must keep the marker, and
                // with their original first word put back must match the source's digest.
                let page = memory.base + p * basePageSize
                let marked = t.written.contains(p)
                if marked && page.load(as: UInt64.self) != MigrationPattern.marker(page: p) {
                    mismatch("page \(p): the workload's write was lost")
                }
                let digest = PageDigest.of(page, word0: marked ? t.originalWord0[p] : nil)
                if digest != expectedDigests[p] {
                    mismatch("page \(p): digest \(hex(digest)) instead of the source's \(hex(expectedDigests[p]))")
                }
            }
            return (mismatches, first)
        }
        for p in pages {
            let words = (memory.base + p * basePageSize).assumingMemoryBound(to: UInt64.self)
            for w in 0..<basePageSize / 8 {
                // A written word holds the marker; a dropped page is zeros otherwise (also when the
                // workload wrote to it after dropping it); every other word is the source's.
                let expected = w == 0 && t.written.contains(p) ? MigrationPattern.marker(page: p)
                    : t.discarded.contains(p) ? 0 : MigrationPattern.word(page: p, word: w, seed: seed, layout: layout)
                if words[w] != expected { mismatch("page \(p) word \(w): \(hex(words[w])) instead of \(hex(expected))") }
            }
        }
        return (mismatches, first)
    }
}

/// The pager answered the workload in a way the handoff protocol does not allow.
public struct WorkloadError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}
