import Glibc
import PagerKernel
import Synchronization
import SystemPackage
import Testing

@Suite("userfaultfd on the real kernel", .serialized, .enabled(if: isRoot, "needs root for userfaultfd and hugetlbfs"))
struct UserfaultfdTests {
    @Test("UFFDIO_API reports the features the pager relies on")
    func features() throws {
        let supported = try Userfaultfd.supportedFeatures()
        let needed: Userfaultfd.Features = [.missingShmem, .missingHugetlbfs, .minorShmem, .wpAsync, .wpUnpopulated,
                                            .eventRemove, .eventUnmap, .eventRemap, .eventFork, .sigbus, .poison]
        #expect(supported.isSuperset(of: needed), "missing: \(needed.subtracting(supported))")
        let uffd = try Userfaultfd()
        let granted = try uffd.negotiate(.postcopy, optional: [.poison])
        #expect(granted.isSuperset(of: .postcopy))
        #expect(uffd.apiIoctls.isSuperset(of: [.register, .unregister, .api]))
    }

    @Test("/dev/userfaultfd creates a working descriptor")
    func deviceSource() throws {
        let uffd = try Userfaultfd(source: .device)
        try uffd.negotiate([])
        let memory = try MemoryMapping.anonymous(length: 4 * basePageSize)
        let ioctls = try uffd.register(memory.range, mode: .missing)
        #expect(ioctls.contains(.copy) && ioctls.contains(.zeropage) && ioctls.contains(.wake))
    }

    @Test("MISSING faults on 4 KiB anonymous memory are resolved by UFFDIO_COPY from another thread")
    func anonymousFaults() throws {
        try resolveFaults(pages: 256, mapping: try MemoryMapping.anonymous(length: 256 * basePageSize), features: [])
    }

    @Test("MISSING faults on 4 KiB shared memory (memfd) are resolved")
    func sharedMemoryFaults() throws {
        let file = try MemoryFile(memfdNamed: "pager-test-shm", length: 256 * basePageSize)
        try resolveFaults(pages: 256, mapping: try MemoryMapping.map(file, length: 256 * basePageSize), features: [.missingShmem])
    }

    @Test("MISSING faults on 2 MiB hugetlbfs memory are resolved in 2 MiB units")
    func hugetlbFaults() throws {
        let reservation = try HugePageReservation(pages: 4)
        #expect(reservation.added == 4)
        let file = try MemoryFile(memfdNamed: "pager-test-huge", length: 4 * hugePageSize, hugetlb: true)
        #expect(file.pageSize == hugePageSize)
        let mapping = try MemoryMapping.map(file, length: 4 * hugePageSize)
        #expect(try MemoryMapping.kernelPageSize(at: mapping.base) == hugePageSize)
        try resolveFaults(pages: 4, mapping: mapping, features: [.missingHugetlbfs])
    }

    @Test("a tmpfs file named by path (/dev/shm) maps with 4 KiB pages and its faults are resolved")
    func tmpfsPathFaults() throws {
        let path = "/dev/shm/pager-test-\(getpid())"
        defer { unlink(path) }
        let file = try MemoryFile(path: path, length: 64 * basePageSize, create: true)
        #expect(file.pageSize == basePageSize)
        #expect(try file.size() == 64 * basePageSize)
        try resolveFaults(pages: 64, mapping: try MemoryMapping.map(file, length: 64 * basePageSize), features: [.missingShmem])
    }

    @Test("a file on a hugetlbfs mount reports 2 MiB pages (fstatfs) and its faults are resolved")
    func hugetlbfsPathFaults() throws {
        let mountPoint = "/tmp/pager-test-hugetlbfs-\(getpid())"
        #expect(mkdir(mountPoint, 0o700) == 0)
        defer { rmdir(mountPoint) }
        let (status, output) = try runProgram("/bin/mount", ["-t", "hugetlbfs", "-o", "pagesize=2M", "none", mountPoint])
        try #require(status == 0, "mount hugetlbfs: \(output)")
        defer { _ = try? runProgram("/bin/umount", [mountPoint]) }
        let reservation = try HugePageReservation(pages: 2)
        do {
            let file = try MemoryFile(path: mountPoint + "/vm.ram", length: 2 * hugePageSize, create: true)
            #expect(file.pageSize == hugePageSize)
            try resolveFaults(pages: 2, mapping: try MemoryMapping.map(file, length: 2 * hugePageSize), features: [.missingHugetlbfs])
        }
        _ = reservation
    }

    /// Registers `mapping`, touches every page from this thread in a scrambled order while a
    /// handler thread fills them, and checks every byte.
    private func resolveFaults(pages: Int, mapping: consuming MemoryMapping, features: Userfaultfd.Features) throws {
        let uffd = try Userfaultfd()
        try uffd.negotiate(features)
        try uffd.register(mapping.range, mode: .missing)
        let handler = try PatternFaultHandler(uffd: uffd, base: mapping.base, pageSize: mapping.pageSize, seed: 7)
        var bad = 0
        for i in 0..<pages {
            let index = (i &* 37) % pages // 37 is coprime with the page counts used: a permutation
            bad += patternMismatches(mapping.page(index), length: mapping.pageSize, index: index, seed: 7)
        }
        handler.finish()
        #expect(bad == 0)
        let faults = handler.events.filter { if case .pageFault = $0 { true } else { false } }.count
        #expect(faults == pages, "one fault per page, each page filled once")
    }

    @Test("COPY outcomes: DONTWAKE then WAKE, EEXIST on a present page, ZEROPAGE")
    func copyOutcomes() throws {
        let mapping = try MemoryMapping.anonymous(length: 8 * basePageSize)
        let uffd = try Userfaultfd()
        try uffd.negotiate([])
        try uffd.register(mapping.range, mode: .missing)
        let staging = UnsafeMutableRawPointer.allocate(byteCount: basePageSize, alignment: 4096)
        defer { staging.deallocate() }
        fillPattern(staging, length: basePageSize, index: 0)
        // Pages are installed before anyone touches them, so nothing blocks.
        let page0 = UInt64(UInt(bitPattern: mapping.page(0)))
        #expect(try uffd.copy(to: page0, from: staging, length: UInt64(basePageSize), dontWake: true) == .installed(bytes: 4096))
        try uffd.wake(AddressRange(start: page0, length: UInt64(basePageSize)))
        #expect(try uffd.copy(to: page0, from: staging, length: UInt64(basePageSize)) == .alreadyPresent(installedBefore: 0))
        // A two-page copy whose second page is present installs the first and reports EEXIST.
        let page1 = UInt64(UInt(bitPattern: mapping.page(1)))
        let page2 = UInt64(UInt(bitPattern: mapping.page(2)))
        #expect(try uffd.copy(to: page2, from: staging, length: UInt64(basePageSize)) == .installed(bytes: 4096))
        let two = UnsafeMutableRawPointer.allocate(byteCount: 2 * basePageSize, alignment: 4096)
        defer { two.deallocate() }
        // The kernel installs page by page: a copy that stops at a present page after installing
        // some returns EAGAIN with the partial count; retrying the rest then reports EEXIST.
        #expect(try uffd.copy(to: page1, from: two, length: UInt64(2 * basePageSize)) == .retry(installedBefore: 4096))
        #expect(try uffd.copy(to: page2, from: two + basePageSize, length: UInt64(basePageSize)) == .alreadyPresent(installedBefore: 0))
        #expect(try uffd.zeroPage(AddressRange(start: UInt64(UInt(bitPattern: mapping.page(3))), length: UInt64(basePageSize))) == .installed(bytes: 4096))
        #expect(mapping.page(3).load(as: UInt64.self) == 0)
        #expect(patternMismatches(mapping.page(0), length: basePageSize, index: 0) == 0)
        // Unaligned requests are bugs, not outcomes: they throw with the range in the message.
        #expect(throws: KernelError.self) { try uffd.copy(to: page0 + 1, from: staging, length: 4096) }
    }

    @Test("MINOR faults on shared memory are resolved with UFFDIO_CONTINUE")
    func minorFaults() throws {
        let pages = 16
        let file = try MemoryFile(memfdNamed: "pager-test-minor", length: pages * basePageSize)
        let writer = try MemoryMapping.map(file, length: pages * basePageSize)
        for i in 0..<pages { fillPattern(writer.page(i), length: basePageSize, index: i) } // page cache now holds the data
        let reader = try MemoryMapping.map(file, length: pages * basePageSize)
        let uffd = try Userfaultfd()
        try uffd.negotiate([.minorShmem])
        try uffd.register(reader.range, mode: .minor)
        let base = UInt64(UInt(bitPattern: reader.base))
        let minorFaults = SharedCounter()
        let thread = try KernelThread(name: "test-minor") {
            var seen = 0
            while seen < pages {
                guard (try? uffd.waitReadable(timeoutMilliseconds: 2000)) == true else { return }
                for case .pageFault(let address, let flags, _) in (try? uffd.readEvents()) ?? [] where flags.contains(.minor) {
                    let page = address & ~UInt64(basePageSize - 1)
                    _ = try? uffd.continueMapping(AddressRange(start: page, length: UInt64(basePageSize)))
                    seen += 1
                    minorFaults.add(1)
                }
            }
        }
        var bad = 0
        for i in 0..<pages { bad += patternMismatches(reader.page(i), length: basePageSize, index: i) }
        thread.join()
        #expect(bad == 0)
        #expect(minorFaults.value == pages)
        _ = base
    }

    @Test("WP faults: a write to a write-protected page waits until protection is lifted")
    func writeProtectFaults() throws {
        let mapping = try MemoryMapping.anonymous(length: 4 * basePageSize)
        for i in 0..<4 { fillPattern(mapping.page(i), length: basePageSize, index: i) }
        let uffd = try Userfaultfd()
        try uffd.negotiate([.pagefaultFlagWP])
        try uffd.register(mapping.range, mode: [.missing, .writeProtect])
        try uffd.writeProtect(mapping.range, protect: true)
        let target = UInt64(UInt(bitPattern: mapping.page(2)))
        let sawWP = SharedCounter()
        let thread = try KernelThread(name: "test-wp") {
            guard (try? uffd.waitReadable(timeoutMilliseconds: 5000)) == true else { return }
            for case .pageFault(let address, let flags, _) in (try? uffd.readEvents()) ?? [] where flags.contains(.writeProtect) {
                if address & ~4095 == target { sawWP.add(1) }
                try? uffd.writeProtect(AddressRange(start: address & ~4095, length: 4096), protect: false)
            }
        }
        mapping.page(2).storeBytes(of: 0xDEAD_BEEF, as: UInt64.self) // blocks until the handler unprotects
        thread.join()
        #expect(sawWP.value == 1)
        #expect(mapping.page(2).load(as: UInt64.self) == 0xDEAD_BEEF)
        #expect(patternMismatches(mapping.page(1), length: basePageSize, index: 1) == 0)
    }

    @Test("Non-cooperative events: REMOVE, REMAP, UNMAP and FORK are reported with their ranges")
    func events() throws {
        let length = 16 * basePageSize
        let mapping = try MemoryMapping.anonymous(length: length)
        let uffd = try Userfaultfd()
        try uffd.negotiate([.eventRemove, .eventUnmap, .eventRemap, .eventFork])
        let base = UInt64(UInt(bitPattern: mapping.base))
        try uffd.register(mapping.range, mode: .missing)
        let handler = try PatternFaultHandler(uffd: uffd, base: mapping.base, pageSize: basePageSize)
        #expect(patternMismatches(mapping.page(0), length: basePageSize, index: 0) == 0) // one fault
        try mapping.advise(.dontNeed, offset: 4 * basePageSize, length: 2 * basePageSize)
        #expect(try runTouchingChild() == 0)
        // mremap to a new place: the registration moves with it and a REMAP event is sent.
        let movedAt: UInt64
        do {
            let moved = try mapping.moved()
            movedAt = UInt64(UInt(bitPattern: moved.base))
        } // dropping `moved` unmaps it: an UNMAP event
        handler.finish()
        let events = handler.events
        #expect(events.contains(.remove(start: base + 4 * 4096, end: base + 6 * 4096)))
        #expect(events.contains { if case .fork(let fd) = $0 { close(fd); return fd >= 0 } else { return false } })
        #expect(events.contains(.remap(from: base, to: movedAt, length: UInt64(length))))
        #expect(events.contains(.unmap(start: movedAt, end: movedAt + UInt64(length))))
    }

    @Test("POISON makes a later access raise SIGBUS instead of reading zeros; COPY may still replace it")
    func poison() throws {
        let mapping = try MemoryMapping.anonymous(length: 4 * basePageSize)
        let uffd = try Userfaultfd()
        try uffd.negotiate([.poison])
        try uffd.register(mapping.range, mode: .missing)
        let page = AddressRange(start: UInt64(UInt(bitPattern: mapping.page(1))), length: UInt64(basePageSize))
        #expect(try uffd.poison(page) == .installed(bytes: 4096))
        // A child inherits the poison marker (markers survive fork) and dies touching it.
        #expect(try runTouchingChild(address: mapping.page(1)) == SIGBUS)
        // The kernel treats the marker like an empty PTE for installs: a page that arrives
        // after all can replace it. (The destination only poisons pages it has given up on.)
        let staging = UnsafeMutableRawPointer.allocate(byteCount: basePageSize, alignment: 4096)
        defer { staging.deallocate() }
        fillPattern(staging, length: basePageSize, index: 1)
        #expect(try uffd.copy(to: page.start, from: staging, length: page.length) == .installed(bytes: 4096))
        #expect(patternMismatches(mapping.page(1), length: basePageSize, index: 1) == 0)
    }

    @Test("The decoder reads struct uffd_msg exactly")
    func decodeMessage() {
        var bytes = [UInt8](repeating: 0, count: 32)
        func put(_ v: UInt64, at o: Int) { withUnsafeBytes(of: v.littleEndian) { for i in 0..<8 { bytes[o + i] = $0[i] } } }
        bytes[0] = 0x12
        put(1, at: 8) // UFFD_PAGEFAULT_FLAG_WRITE
        put(0x7f00_dead_b000, at: 16)
        put(1234, at: 24)
        #expect(bytes.withUnsafeBytes { UffdEvent(message: $0) } == .pageFault(address: 0x7f00_dead_b000, flags: .write, threadID: 1234))
        bytes[0] = 0x15
        put(0x1000, at: 8)
        put(0x3000, at: 16)
        #expect(bytes.withUnsafeBytes { UffdEvent(message: $0) } == .remove(start: 0x1000, end: 0x3000))
        bytes[0] = 0x77
        #expect(bytes.withUnsafeBytes { UffdEvent(message: $0) } == .unknown(code: 0x77))
    }
}

/// A thread-safe counter for handler threads to report to the test.
final class SharedCounter: Sendable {
    private let count = Atomic<Int>(0)
    func add(_ n: Int) { count.add(n, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}
