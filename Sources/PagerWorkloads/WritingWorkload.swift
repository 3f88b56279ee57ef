import PagerKernel

/// Digests of page contents, to compare a source's final memory with a destination's.
public enum PageDigest {
    /// A 64-bit digest of one 4 KiB page; `word0` replaces the first word when given (a
    /// destination workload that overwrote it with a marker checks the rest this way).
    public static func of(_ page: UnsafeRawPointer, word0: UInt64? = nil) -> UInt64 {
        let words = page.assumingMemoryBound(to: UInt64.self)
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for i in 0..<basePageSize / 8 {
            let w = i == 0 ? (word0 ?? words[0]) : words[i]
            h = (h ^ w) &* 0x0000_0100_0000_01B3
            h ^= h >> 29
        }
        return h
    }

    /// Digests of every page of `[address, address + bytes)` in process `pid`, read with
    /// `process_vm_readv` (the process should be stopped, so the memory is final).
    public static func ofProcess(_ pid: Int32, address: UInt64, bytes: Int) throws -> [UInt64] {
        let memory = ProcessMemory(pid: pid)
        let chunk = 4 << 20
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: basePageSize)
        defer { buffer.deallocate() }
        var result: [UInt64] = []
        result.reserveCapacity(bytes / basePageSize)
        var at = 0
        while at < bytes {
            let n = min(chunk, bytes - at)
            try memory.read(address + UInt64(at), into: buffer, count: n)
            for p in stride(from: 0, to: n, by: basePageSize) { result.append(of(buffer + p)) }
            at += n
        }
        return result
    }

    /// Writes digests as little-endian u64s.
    public static func save(_ digests: [UInt64], to path: String) throws {
        let file = try MemoryFile(path: path, length: digests.count * 8, create: true)
        let mapping = try MemoryMapping.map(file, length: digests.count * 8)
        digests.withUnsafeBytes { mapping.base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    public static func load(from path: String) throws -> [UInt64] {
        let file = try MemoryFile(path: path, writable: false)
        let size = try file.size()
        let mapping = try MemoryMapping.map(file, length: size, shared: true, writable: false)
        return Array(UnsafeBufferPointer(start: mapping.base.assumingMemoryBound(to: UInt64.self), count: size / 8))
    }
}

/// A source-side workload whose memory is migrated while it keeps writing: it fills its
/// memory, registers it for asynchronous write-protect (`UFFD_FEATURE_WP_ASYNC`), hands the
/// userfaultfd to `pagerd source --live-socket`, then writes pages at a steady rate until it
/// is stopped (the source daemon stops it with SIGSTOP at the switch) or killed.
public struct WritingWorkload {
    public var bytes: Int
    public var seed: UInt64
    /// Pages written per second (spread over 1 ms steps).
    public var pagesPerSecond: Int
    /// Write only to the first `hotPages` pages (a hot set that never converges); nil: anywhere.
    public var hotPages: Int?

    public init(bytes: Int, seed: UInt64, pagesPerSecond: Int, hotPages: Int? = nil) {
        self.bytes = bytes
        self.seed = seed
        self.pagesPerSecond = pagesPerSecond
        self.hotPages = hotPages
    }

    public func run(socketPath: String, ready: (String) -> Void) throws -> Never {
        let memory = try MemoryMapping.anonymous(length: bytes)
        let pages = bytes / basePageSize
        for p in 0..<pages where p % 16 != 15 { // every 16th page stays zero
            let words = memory.page(p).assumingMemoryBound(to: UInt64.self)
            for w in 0..<basePageSize / 8 { words[w] = MigrationPattern.word(page: p, word: w, seed: seed) }
        }
        let uffd = try Userfaultfd()
        _ = try uffd.negotiate([.wpAsync, .wpUnpopulated])
        _ = try uffd.register(memory.range, mode: .writeProtect)
        let json = "[{\"base_host_virt_addr\":\(UInt(bitPattern: memory.base)),\"size\":\(bytes),\"offset\":0,\"page_size\":\(basePageSize)}]"
        let socket = try UnixSocket.connect(path: socketPath)
        try uffd.withUnsafeDescriptor { fd in try UnixSocket.send(socket, bytes: Array(json.utf8), descriptors: [fd]) }
        ready("live memory handed over: base=\(UInt(bitPattern: memory.base)) bytes=\(bytes)")
        let span = UInt64(min(pages, hotPages ?? pages))
        var x = seed | 1
        var version: UInt64 = 1
        let started = monotonicNanoseconds()
        var written = 0
        while true {
            // Write as many pages as the rate allows by now, then sleep 100 µs: steady, not bursty.
            let due = Int(Double(monotonicNanoseconds() - started) / 1e9 * Double(pagesPerSecond))
            while written < due {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                let words = memory.page(Int(x % span)).assumingMemoryBound(to: UInt64.self)
                words[0] = version
                words[basePageSize / 16] = ~version ^ x
                version += 1
                written += 1
            }
            sleepMicroseconds(100)
        }
    }
}
