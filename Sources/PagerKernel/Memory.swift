import CPagerKernel
import Glibc
import Synchronization
import SystemPackage

/// 4 KiB, the base page size on x86-64.
public let basePageSize = 4096
/// 2 MiB, the huge page size used for hugetlbfs regions.
public let hugePageSize = 2 << 20

/// A file that backs shared memory: a memfd, a tmpfs file (`/dev/shm/vm.ram`), a hugetlbfs
/// file, or a plain file. Owns its descriptor and closes it on deinit.
public final class MemoryFile: @unchecked Sendable {
    public let descriptor: FileDescriptor
    /// The file's page size: 2 MiB (or the mount's size) on hugetlbfs, 4 KiB otherwise.
    public let pageSize: Int
    /// A name for messages: the path, or `memfd:NAME`.
    public let name: String

    /// `memfd_create` of `length` bytes. `hugetlb` asks for 2 MiB hugetlbfs pages
    /// (`MFD_HUGETLB | MFD_HUGE_2MB`), which must be reserved (see ``HugePageReservation``).
    /// The corresponding C function is `memfd_create`.
    public init(memfdNamed name: String, length: Int, hugetlb: Bool = false) throws(KernelError) {
        var flags = PAGER_MFD_CLOEXEC
        if hugetlb { flags |= PAGER_MFD_HUGETLB | PAGER_MFD_HUGE_2MB }
        let fd = pager_memfd_create(name, flags)
        if fd < 0 { throw KernelError("memfd_create", negatedErrno: fd, detail: name) }
        descriptor = FileDescriptor(rawValue: fd)
        self.name = "memfd:\(name)"
        pageSize = hugetlb ? hugePageSize : basePageSize
        if ftruncate(fd, off_t(length)) < 0 {
            throw KernelError("ftruncate", Errno(rawValue: Glibc.errno), detail: "\(self.name) to \(length) bytes")
        }
    }

    /// Opens an existing file (or creates it with `create`), sizing it to `length` if given.
    /// The page size is discovered with `fstatfs`.
    public init(path: String, length: Int? = nil, create: Bool = false, writable: Bool = true) throws(KernelError) {
        do {
            descriptor = try FileDescriptor.open(
                path, writable ? .readWrite : .readOnly,
                options: create ? [.closeOnExec, .create] : [.closeOnExec],
                permissions: create ? [.ownerReadWrite] : nil)
        } catch {
            throw KernelError("open", error, detail: path)
        }
        name = path
        pageSize = try MemoryFile.pageSize(of: descriptor, name: path)
        if let length, ftruncate(descriptor.rawValue, off_t(length)) < 0 {
            throw KernelError("ftruncate", Errno(rawValue: Glibc.errno), detail: "\(path) to \(length) bytes")
        }
    }

    deinit { try? descriptor.close() }

    /// Whether `other` is open on the same file (`fstat`: device and inode), e.g. after a path
    /// was opened again and may have been renamed or replaced meanwhile.
    public func isSameFile(as other: MemoryFile) -> Bool {
        var a = stat(), b = stat()
        guard fstat(descriptor.rawValue, &a) == 0, fstat(other.descriptor.rawValue, &b) == 0 else { return false }
        return a.st_dev == b.st_dev && a.st_ino == b.st_ino
    }

    /// The file's size (`fstat`).
    public func size() throws(KernelError) -> Int {
        var st = stat()
        if fstat(descriptor.rawValue, &st) < 0 { throw KernelError("fstat", Errno(rawValue: Glibc.errno), detail: name) }
        return Int(st.st_size)
    }

    /// Drops `[offset, offset+length)` of the file (`fallocate` with `FALLOC_FL_PUNCH_HOLE`):
    /// it reads as zeros afterwards, and mappings of it lose those pages without any
    /// userfaultfd event.
    public func punchHole(offset: Int, length: Int) throws(KernelError) {
        let r = pager_punch_hole(descriptor.rawValue, Int64(offset), Int64(length))
        if r < 0 { throw KernelError("fallocate(PUNCH_HOLE)", negatedErrno: r, detail: "\(name) \(offset)+\(length)") }
    }

    /// The ranges of the file that hold data (`lseek` with `SEEK_DATA`/`SEEK_HOLE`); the rest
    /// are holes, which read as zeros and need not be read at all.
    public func dataExtents() throws(KernelError) -> [Range<Int>] {
        // SEEK_DATA and SEEK_HOLE (3 and 4) are only declared with _GNU_SOURCE.
        let seekData: Int32 = 3, seekHole: Int32 = 4
        let end = try size()
        var extents: [Range<Int>] = []
        var at = 0
        while at < end {
            let data = lseek(descriptor.rawValue, off_t(at), seekData)
            if data < 0 {
                if Glibc.errno == ENXIO { break } // no data after `at`
                // Filesystems without hole support: treat everything as data.
                if Glibc.errno == EINVAL { return [at..<end] }
                throw KernelError("lseek(SEEK_DATA)", Errno(rawValue: Glibc.errno), detail: name)
            }
            let hole = lseek(descriptor.rawValue, data, seekHole)
            if hole < 0 { throw KernelError("lseek(SEEK_HOLE)", Errno(rawValue: Glibc.errno), detail: name) }
            extents.append(Int(data)..<min(end, Int(hole)))
            at = Int(hole)
        }
        return extents
    }

    /// The page size of the filesystem holding `fd`: hugetlbfs reports its huge page size
    /// as the block size. The corresponding C function is `fstatfs`.
    public static func pageSize(of fd: FileDescriptor, name: String) throws(KernelError) -> Int {
        var fs = statfs()
        if fstatfs(fd.rawValue, &fs) < 0 { throw KernelError("fstatfs", Errno(rawValue: Glibc.errno), detail: name) }
        // HUGETLBFS_MAGIC from <linux/magic.h>.
        return UInt(fs.f_type) == 0x9584_58f6 ? Int(fs.f_bsize) : basePageSize
    }
}

/// One mapping of memory, unmapped when it goes away. Non-copyable: exactly one owner.
public struct MemoryMapping: ~Copyable, @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let length: Int
    /// The page size the kernel uses for this mapping (4 KiB or the huge page size).
    public let pageSize: Int

    private init(base: UnsafeMutableRawPointer, length: Int, pageSize: Int) {
        self.base = base
        self.length = length
        self.pageSize = pageSize
    }

    /// Private anonymous memory (`mmap(MAP_PRIVATE | MAP_ANONYMOUS)`), 4 KiB pages.
    public static func anonymous(length: Int) throws(KernelError) -> MemoryMapping {
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else {
            throw KernelError("mmap", Errno(rawValue: Glibc.errno), detail: "anonymous \(length) bytes")
        }
        return MemoryMapping(base: p, length: length, pageSize: basePageSize)
    }

    /// Maps `length` bytes of `file` at `offset` (`MAP_SHARED`, or `MAP_PRIVATE` if not `shared`).
    public static func map(_ file: MemoryFile, offset: Int = 0, length: Int, shared: Bool = true,
                           writable: Bool = true) throws(KernelError) -> MemoryMapping {
        precondition(offset % file.pageSize == 0 && length % file.pageSize == 0, "unaligned mapping of \(file.name)")
        let prot = writable ? PROT_READ | PROT_WRITE : PROT_READ
        let p = mmap(nil, length, prot, shared ? MAP_SHARED : MAP_PRIVATE, file.descriptor.rawValue, off_t(offset))
        guard let p, p != MAP_FAILED else {
            throw KernelError("mmap", Errno(rawValue: Glibc.errno), detail: "\(file.name) offset \(offset) length \(length)")
        }
        return MemoryMapping(base: p, length: length, pageSize: file.pageSize)
    }

    deinit { munmap(base, length) }

    /// Moves the mapping to a new address (`mremap` with `MREMAP_MAYMOVE`, same length):
    /// a userfaultfd registration moves with it and reports `UFFD_EVENT_REMAP`.
    public consuming func moved() throws(KernelError) -> MemoryMapping {
        let (base, length, pageSize) = (self.base, self.length, self.pageSize)
        var err: Int32 = 0
        guard let newBase = pager_mremap_relocate(base, length, &err) else {
            let error = KernelError("mremap", Errno(rawValue: err), detail: "\(range)")
            _ = consume self // still mapped where it was: unmap it there
            throw error
        }
        discard self
        return MemoryMapping(base: newBase, length: length, pageSize: pageSize)
    }


    /// The whole mapping as an address range, for userfaultfd registration.
    public var range: AddressRange { AddressRange(base, length: length) }
    public var pageCount: Int { length / pageSize }

    /// The address of page `index`.
    @inline(__always)
    public func page(_ index: Int) -> UnsafeMutableRawPointer { base + index * pageSize }

    /// `madvise(2)`.
    public func advise(_ advice: Advice, offset: Int = 0, length: Int? = nil) throws(KernelError) {
        let len = length ?? self.length - offset
        if madvise(base + offset, len, advice.rawValue) < 0 {
            throw KernelError("madvise", Errno(rawValue: Glibc.errno), detail: "\(advice) \(AddressRange(base + offset, length: len))")
        }
    }

    /// Advice values for ``advise(_:offset:length:)``.
    public enum Advice: Int32, Sendable {
        case dontNeed = 4 // MADV_DONTNEED
        case remove = 9 // MADV_REMOVE
        case hugePage = 14 // MADV_HUGEPAGE
        case noHugePage = 15 // MADV_NOHUGEPAGE
        case populateWrite = 23 // MADV_POPULATE_WRITE
    }

    /// The kernel's page size for the mapping containing `address`, from the
    /// `KernelPageSize` line of `/proc/self/smaps`.
    public static func kernelPageSize(at address: UnsafeRawPointer) throws(KernelError) -> Int {
        let target = UInt(bitPattern: address)
        let text = try readWholeFile("/proc/self/smaps")
        var inside = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if let dash = line.firstIndex(of: "-"), line.first?.isHexDigit == true,
               let space = line.firstIndex(of: " "), dash < space,
               let lo = UInt(line[..<dash], radix: 16), let hi = UInt(line[line.index(after: dash)..<space], radix: 16) {
                inside = lo <= target && target < hi
            } else if inside, line.hasPrefix("KernelPageSize:") {
                let kb = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.flatMap { Int($0) }
                if let kb { return kb * 1024 }
            }
        }
        throw KernelError("smaps", .noSuchAddressOrDevice, detail: "no mapping contains \(hex(UInt64(target)))")
    }
}

/// Reads 8 bytes at `address` in a way the optimizer cannot remove: a workload's "touch" that
/// must really fault the page in.
@inline(__always)
public func touch(_ address: UnsafeRawPointer) -> UInt64 { pager_touch_read(address) }

/// Reads a whole (small, e.g. procfs) file as text (``readFileBytes(_:)``).
public func readWholeFile(_ path: String) throws(KernelError) -> String {
    String(decoding: try readFileBytes(path), as: UTF8.self)
}

/// Writes `text` to a file: a procfs or sysfs knob, or a new or truncated regular file.
public func writeWholeFile(_ path: String, _ text: String) throws(KernelError) {
    let fd: FileDescriptor
    do {
        fd = path.hasPrefix("/proc/") || path.hasPrefix("/sys/")
            ? try FileDescriptor.open(path, .writeOnly, options: .closeOnExec)
            : try FileDescriptor.open(path, .writeOnly, options: [.closeOnExec, .create, .truncate], permissions: [.ownerReadWrite, .groupRead, .otherRead])
    } catch {
        throw KernelError("open", error, detail: path)
    }
    defer { try? fd.close() }
    do { _ = try fd.writeAll(text.utf8) } catch { throw KernelError("write", error, detail: path) }
}

/// Reserves 2 MiB huge pages for hugetlbfs by raising `/proc/sys/vm/nr_hugepages`, and
/// gives them back on deinit. Requires root.
///
/// Reservations adjust the pool relative to its current size under a process-wide lock, so
/// several at once (tests run in parallel) add up instead of overwriting each other.
public struct HugePageReservation: ~Copyable {
    private static let path = "/proc/sys/vm/nr_hugepages"
    private static let lock = Mutex<Void>(())
    public let added: Int

    /// Adds `count` pages to the pool. Throws with `ENOMEM` if the kernel could not find them.
    public init(pages count: Int) throws(KernelError) {
        added = try HugePageReservation.lock.withLock { (_) throws(KernelError) -> Int in
            let before = try HugePageReservation.poolSize()
            try writeWholeFile(HugePageReservation.path, "\(before + count)\n")
            let after = (try? HugePageReservation.poolSize()) ?? before
            if after - before < count {
                try? writeWholeFile(HugePageReservation.path, "\(before)\n")
                throw KernelError("nr_hugepages", .noMemory, detail: "asked for \(count) more 2 MiB pages, kernel found \(after - before)")
            }
            return after - before
        }
    }

    deinit {
        let added = self.added
        HugePageReservation.lock.withLock { _ in
            if let now = try? HugePageReservation.poolSize() {
                try? writeWholeFile(HugePageReservation.path, "\(max(0, now - added))\n")
            }
        }
    }

    /// The current value of `nr_hugepages`.
    public static func poolSize() throws(KernelError) -> Int {
        let text = try readWholeFile(path)
        guard let n = Int(text.trimmingWhitespace()) else {
            throw KernelError("nr_hugepages", .invalidArgument, detail: "unreadable: \(text)")
        }
        return n
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        while let c = s.last, c.isWhitespace { s.removeLast() }
        return String(s)
    }
}
