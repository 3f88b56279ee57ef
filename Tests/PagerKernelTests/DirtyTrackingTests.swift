import Glibc
import PagerKernel
import Testing

@Suite("WP_ASYNC dirty tracking with PAGEMAP_SCAN", .serialized, .enabled(if: isRoot, "needs root for userfaultfd"))
struct DirtyTrackingTests {
    /// Registers `mapping` for async write-protect and protects it all.
    private func track(_ mapping: borrowing MemoryMapping) throws -> Userfaultfd {
        let uffd = try Userfaultfd()
        try uffd.negotiate([.wpAsync, .wpUnpopulated])
        try uffd.register(mapping.range, mode: .writeProtect)
        try uffd.writeProtect(mapping.range, protect: true)
        return uffd
    }

    private func pageRanges(_ mapping: borrowing MemoryMapping, _ pages: [Int]) -> [AddressRange] {
        var result: [AddressRange] = []
        for p in pages.sorted() {
            let start = UInt64(UInt(bitPattern: mapping.page(p)))
            if let last = result.last, last.end == start {
                result[result.count - 1].length += UInt64(mapping.pageSize)
            } else {
                result.append(AddressRange(start: start, length: UInt64(mapping.pageSize)))
            }
        }
        return result
    }

    @Test("returns exactly the pages written since the last scan, and re-protects them")
    func writtenPagesAndReprotect() throws {
        let pages = 4096 // 16 MiB
        let mapping = try MemoryMapping.anonymous(length: pages * basePageSize)
        for i in 0..<pages { mapping.page(i).storeBytes(of: UInt64(i), as: UInt64.self) } // populate
        let uffd = try track(mapping)
        let scanner = try PagemapScanner()
        #expect(try scanner.writtenRanges(in: mapping.range, reprotect: true) == [])

        let written = [0, 1, 2, 100, 101, 2047, 4095]
        for p in written { mapping.page(p).storeBytes(of: 0xAB, as: UInt64.self) }
        #expect(try scanner.writtenRanges(in: mapping.range, reprotect: true) == pageRanges(mapping, written))
        // Re-protected: a second scan finds nothing until the next write.
        #expect(try scanner.writtenRanges(in: mapping.range, reprotect: true) == [])
        mapping.page(5).storeBytes(of: 1, as: UInt8.self)
        #expect(try scanner.writtenRanges(in: mapping.range, reprotect: true) == pageRanges(mapping, [5]))
        _ = uffd
    }

    @Test("unpopulated pages are tracked too (WP_UNPOPULATED), and get-only scans do not re-protect")
    func unpopulatedAndGetOnly() throws {
        let mapping = try MemoryMapping.anonymous(length: 256 * basePageSize)
        let uffd = try track(mapping)
        let scanner = try PagemapScanner()
        mapping.page(10).storeBytes(of: 1, as: UInt8.self)
        mapping.page(200).storeBytes(of: 1, as: UInt8.self)
        let expected = pageRanges(mapping, [10, 200])
        #expect(try scanner.writtenRanges(in: mapping.range, reprotect: false) == expected)
        #expect(try scanner.writtenRanges(in: mapping.range, reprotect: false) == expected, "get-only leaves pages marked")
        #expect(try scanner.writtenRanges(in: mapping.range, reprotect: true) == expected)
        #expect(try scanner.writtenRanges(in: mapping.range, reprotect: true) == [])
        _ = uffd
    }

    @Test("more regions than one ioctl returns: resumed scans report every page exactly once",
          arguments: [false, true])
    func manyRegions(reprotect: Bool) throws {
        let pages = 8192
        let mapping = try MemoryMapping.anonymous(length: pages * basePageSize)
        for i in 0..<pages { mapping.page(i).storeBytes(of: 0, as: UInt8.self) }
        let uffd = try track(mapping)
        // Every other page: 4096 separate regions, eight times the 512 one call returns.
        let written = Array(stride(from: 0, to: pages, by: 2))
        for p in written { mapping.page(p).storeBytes(of: 1, as: UInt8.self) }
        let scanner = try PagemapScanner(vecCapacity: 512)
        let found = try scanner.writtenRanges(in: mapping.range, reprotect: reprotect)
        #expect(found.count == written.count)
        #expect(found == pageRanges(mapping, written))
        _ = uffd
    }

    @Test("a scan of memory not registered for WP_ASYNC fails with a precise error")
    func unregisteredFails() throws {
        let mapping = try MemoryMapping.anonymous(length: 16 * basePageSize)
        mapping.page(0).storeBytes(of: 1, as: UInt8.self)
        let scanner = try PagemapScanner()
        #expect(throws: KernelError.self) { try scanner.writtenRanges(in: mapping.range, reprotect: true) }
    }
}

@Suite("Descriptor passing and io_uring")
struct PlumbingTests {
    @Test("a userfaultfd passed over a Unix socket with SCM_RIGHTS resolves faults in the sender's memory",
          .enabled(if: isRoot, "needs root for userfaultfd"))
    func passUserfaultfd() throws {
        let (a, b) = try UnixSocket.pair()
        defer { try? a.close(); try? b.close() }
        let mapping = try MemoryMapping.anonymous(length: 32 * basePageSize)
        let sent = try Userfaultfd()
        try sent.negotiate([])
        try sent.register(mapping.range, mode: .missing)
        try sent.withUnsafeDescriptor { fd in try UnixSocket.send(a, bytes: Array("uffd".utf8), descriptors: [fd]) }
        let received = try UnixSocket.receive(b, maxBytes: 64, maxDescriptors: 4)
        #expect(received.bytes == Array("uffd".utf8))
        #expect(received.descriptors.count == 1)
        #expect(!received.truncated)
        let adopted = try Userfaultfd(adopting: received.descriptors[0])
        let handler = try PatternFaultHandler(uffd: adopted, base: mapping.base, pageSize: basePageSize, seed: 3)
        var bad = 0
        for i in 0..<32 { bad += patternMismatches(mapping.page(i), length: basePageSize, index: i, seed: 3) }
        handler.finish()
        #expect(bad == 0)
    }

    @Test("extra descriptors beyond the receiver's limit are closed and reported as truncation")
    func tooManyDescriptors() throws {
        let (a, b) = try UnixSocket.pair()
        defer { try? a.close(); try? b.close() }
        let (x, y) = try UnixSocket.pair()
        defer { try? x.close(); try? y.close() }
        try UnixSocket.send(a, bytes: [1], descriptors: [x, y])
        let received = try UnixSocket.receive(b, maxBytes: 8, maxDescriptors: 1)
        #expect(received.descriptors.count == 1)
        #expect(received.truncated)
        for fd in received.descriptors { try fd.close() }
    }

    @Test("io_uring sends and receives on a socket pair")
    func ioUring() throws {
        let (a, b) = try UnixSocket.pair()
        defer { try? a.close(); try? b.close() }
        let ring = try IOURing(entries: 8)
        let message = Array("page request".utf8)
        var inbox = [UInt8](repeating: 0, count: message.count)
        try message.withUnsafeBytes { out in
            try inbox.withUnsafeMutableBytes { into in
                try ring.queueReceive(b, into: into, waitAll: true, userData: 2)
                try ring.queueSend(a, out, userData: 1)
                try ring.submit(waitFor: 2)
                var seen: [UInt64: Int32] = [:]
                while seen.count < 2 {
                    let c = try ring.waitCompletion()
                    seen[c.userData] = c.result
                }
                #expect(seen[1] == Int32(message.count))
                #expect(seen[2] == Int32(message.count))
            }
        }
        #expect(inbox == message)
        #expect(ring.popCompletion() == nil)
    }
}

@Suite("WriteTracker", .serialized, .enabled(if: isRoot, "needs root for userfaultfd"))
struct WriteTrackerTests {
    @Test("own memory: reports exactly the pages written since the last call, unpopulated pages included")
    func ownMemory() throws {
        let pages = 1024
        let mapping = try MemoryMapping.anonymous(length: pages * basePageSize)
        for i in 0..<pages / 2 { mapping.page(i).storeBytes(of: UInt64(i), as: UInt64.self) } // half populated
        let tracker = try WriteTracker(ownRange: mapping.range)
        #expect(try tracker.takeWritten() == [])
        for p in [3, 4, 700] { mapping.page(p).storeBytes(of: 1, as: UInt64.self) } // 700 was never populated
        let base = UInt64(UInt(bitPattern: mapping.base))
        #expect(try tracker.takeWritten() == [AddressRange(start: base + 3 * 4096, length: 2 * 4096), AddressRange(start: base + 700 * 4096, length: 4096)])
        #expect(try tracker.takeWritten() == [])
    }
}
