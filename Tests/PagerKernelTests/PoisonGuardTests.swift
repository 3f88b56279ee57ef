import Glibc
import PagerKernel
import Testing

@Suite("PoisonGuard: missing pages are poisoned on every way out", .serialized, .enabled(if: isRoot, "needs root for userfaultfd"))
struct PoisonGuardTests {
    /// 8 registered pages of which page 2 is present (copied in).
    final class Registered {
        let mapping: MemoryMapping
        let uffd: Userfaultfd
        init(_ mapping: consuming MemoryMapping, _ uffd: Userfaultfd) {
            self.mapping = mapping
            self.uffd = uffd
        }
    }

    static func region() throws -> Registered {
        let mapping = try MemoryMapping.anonymous(length: 8 * basePageSize)
        let uffd = try Userfaultfd()
        try uffd.negotiate([.poison])
        try uffd.register(mapping.range, mode: .missing)
        let staging = UnsafeMutableRawPointer.allocate(byteCount: basePageSize, alignment: 4096)
        defer { staging.deallocate() }
        fillPattern(staging, length: basePageSize, index: 2)
        _ = try uffd.copy(to: UInt64(UInt(bitPattern: mapping.page(2))), from: staging, length: UInt64(basePageSize))
        return Registered(mapping, uffd)
    }

    @Test("poisonMissing poisons exactly the missing pages, once; present pages stay readable")
    func explicit() throws {
        let r = try Self.region()
        let guarded = PoisonGuard(uffd: r.uffd, ranges: [(range: r.mapping.range, pageSize: basePageSize)])
        #expect(guarded.coveredByHandler)
        #expect(guarded.poisonMissing() == 7)
        #expect(guarded.poisonMissing() == 7, "a second call changes nothing")
        #expect(try runTouchingChild(address: r.mapping.page(2)) == 0)
        #expect(patternMismatches(r.mapping.page(2), length: basePageSize, index: 2) == 0)
        for p in [0, 1, 3, 7] { #expect(try runTouchingChild(address: r.mapping.page(p)) == SIGBUS, "page \(p)") }
    }

    @Test("a guard dropped without release poisons; a released one does not")
    func deinitAndRelease() throws {
        let r = try Self.region()
        do { _ = PoisonGuard(uffd: r.uffd, ranges: [(range: r.mapping.range, pageSize: basePageSize)]) }
        #expect(try runTouchingChild(address: r.mapping.page(5)) == SIGBUS)

        let o = try Self.region()
        do {
            let g = PoisonGuard(uffd: o.uffd, ranges: [(range: o.mapping.range, pageSize: basePageSize)])
            g.release()
            #expect(g.isReleased && g.poisonMissing() == 0)
        }
        // Not poisoned: a child (whose copy is not registered) reads the page as it is.
        #expect(try runTouchingChild(address: o.mapping.page(5)) == 0)
    }

    @Test("poisonAll covers every live guard of the process (what the fatal-signal handler runs)")
    func all() throws {
        let a = try Self.region()
        let b = try Self.region()
        let ga = PoisonGuard(uffd: a.uffd, ranges: [(range: a.mapping.range, pageSize: basePageSize)])
        let gb = PoisonGuard(uffd: b.uffd, ranges: [(range: b.mapping.range, pageSize: basePageSize)])
        // Other suites may hold guards of their own: at least these 14 pages.
        #expect(PoisonGuard.poisonAll() >= 14)
        #expect(try runTouchingChild(address: a.mapping.page(0)) == SIGBUS)
        #expect(try runTouchingChild(address: b.mapping.page(7)) == SIGBUS)
        ga.release()
        gb.release()
    }

    @Test("smaps: the mappings registered for MISSING faults, with their page sizes")
    func smapsParser() {
        let text = """
            7f0000000000-7f0000200000 rw-s 00000000 00:0f 12 /memfd:x (deleted)
            Size:               2048 kB
            KernelPageSize:     2048 kB
            VmFlags: rd wr sh mr mw me ms ht um
            7f0000400000-7f0000401000 rw-p 00000000 00:00 0
            KernelPageSize:        4 kB
            VmFlags: rd wr mr mw me ac
            7f0000500000-7f0000508000 rw-p 00000000 00:00 0
            KernelPageSize:        4 kB
            VmFlags: rd wr mr mw me ac um uw
            """
        let found = Userfaultfd.missingRegisteredMappings(smaps: text)
        #expect(found.map(\.range) == [AddressRange(start: 0x7f00_0000_0000, length: 0x20_0000),
                                       AddressRange(start: 0x7f00_0050_0000, length: 0x8000)])
        #expect(found.map(\.pageSize) == [2 << 20, 4096])
    }

    @Test("poisonRegisteredMappings finds this descriptor's memory from smaps alone")
    func fromSmaps() throws {
        let r = try Self.region()
        #expect(try r.uffd.poisonRegisteredMappings(ofProcess: getpid()) == 7)
        #expect(try runTouchingChild(address: r.mapping.page(6)) == SIGBUS)
        #expect(try runTouchingChild(address: r.mapping.page(2)) == 0)
    }
}
