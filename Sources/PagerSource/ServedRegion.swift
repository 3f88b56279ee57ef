import PagerKernel
import PagerWire

/// One region the source serves: a file (tmpfs, hugetlbfs or plain) mapped read-only, memory
/// of this process, or memory of another process (read with `process_vm_readv`).
public final class ServedRegion: @unchecked Sendable {
    public let id: UInt32
    public let name: String
    public let length: UInt64
    /// The page size of the backing file (4 KiB, or 2 MiB on hugetlbfs).
    public let pageSize: Int
    /// The bytes served: a read-only mapping of the file, or memory the caller owns; nil when
    /// they are another process's (`process`).
    let base: UnsafeRawPointer?
    /// Another process's memory at `remoteBase`, read into the sender's buffer.
    private let process: ProcessMemory?
    private let remoteBase: UInt64
    /// Set when the region is still being written: pre-copy rounds track its writes.
    public let live: LiveRegion?
    /// Owns the file and its mapping when the region is a file (nil for caller-owned memory).
    let owner: FileBacking?
    /// Data extents at start; outside them the file is a hole (zeros). Re-read with
    /// ``refreshExtents()`` when the file may have changed.
    private(set) var dataExtents: [Range<Int>]

    /// Opens and maps `path` read-only.
    public init(id: UInt32, path: String) throws(KernelError) {
        self.id = id
        let file = try MemoryFile(path: path, writable: false)
        let size = try file.size()
        guard size > 0, size % file.pageSize == 0 else {
            throw KernelError("region", .invalidArgument, detail: "\(path) is \(size) bytes, not a nonzero multiple of its \(file.pageSize)-byte pages")
        }
        name = path
        length = UInt64(size)
        pageSize = file.pageSize
        let backing = FileBacking(file: file, mapping: try MemoryMapping.map(file, length: size, shared: true, writable: false))
        base = UnsafeRawPointer(backing.mapping.base)
        owner = backing
        dataExtents = try file.dataExtents()
        process = nil
        remoteBase = 0
        live = nil
    }

    /// Serves memory of this process (the library API: e.g. a VMM serving its own guest RAM).
    /// The caller keeps `[base, base + length)` mapped and readable while it is served.
    /// With `live`, the memory is still being written and is migrated with pre-copy rounds.
    public init(id: UInt32, name: String, base: UnsafeRawPointer, length: Int, pageSize: Int = basePageSize, live: LiveRegion? = nil) {
        precondition(length > 0 && length % pageSize == 0 && (pageSize == basePageSize || pageSize == hugePageSize))
        self.id = id
        self.name = name
        self.base = base
        self.length = UInt64(length)
        self.pageSize = pageSize
        owner = nil
        dataExtents = [0..<length]
        process = nil
        remoteBase = 0
        self.live = live
    }

    /// Serves `[address, address + length)` of process `pid` (e.g. a workload that handed its
    /// write-tracking userfaultfd to the source daemon). Bytes are read when sent.
    public init(id: UInt32, name: String, pid: Int32, address: UInt64, length: Int, pageSize: Int = basePageSize, live: LiveRegion? = nil) {
        precondition(length > 0 && length % pageSize == 0 && (pageSize == basePageSize || pageSize == hugePageSize))
        self.id = id
        self.name = name
        base = nil
        process = ProcessMemory(pid: pid)
        remoteBase = address
        self.length = UInt64(length)
        self.pageSize = pageSize
        owner = nil
        dataExtents = [0..<length]
        self.live = live
    }

    /// The region's pages that `ranges` (addresses of the live memory) touch, in region pages.
    func pages(of ranges: [AddressRange], memoryBase: UInt64) -> [Range<Int>] {
        let size = UInt64(pageSize)
        return ranges.compactMap { r in
            let start = max(r.start, memoryBase), end = min(r.end, memoryBase + length)
            guard start < end else { return nil }
            return Int((start - memoryBase) / size)..<Int((end - memoryBase + size - 1) / size)
        }
    }

    /// How many pages the region has.
    var pageCount: Int { Int(length / UInt64(pageSize)) }

    /// Where the served bytes live, in the address space that a write tracker scans.
    var trackedBase: UInt64 { base.map { UInt64(UInt(bitPattern: $0)) } ?? remoteBase }

    /// Re-reads the data extents (holes) of the file.
    public func refreshExtents() throws(KernelError) {
        if let owner { dataExtents = try owner.file.dataExtents() }
    }

    /// The REGION descriptor sent to destinations.
    public var descriptor: RegionDescriptor {
        RegionDescriptor(id: id, pageShift: UInt8(pageSize.trailingZeroBitCount), flags: live == nil ? [] : .live, length: length,
                         name: String(name.split(separator: "/").last ?? Substring(name)))
    }

    /// Why a request cannot be served, as the protocol's error code and message; nil if it can.
    func check(offset: UInt64, length: UInt64) -> ProtocolError? {
        if offset >= self.length || length > self.length - offset {
            return ProtocolError(code: .outOfRange, message: "range \(hex(offset))+\(hex(length)) passes the end of region \(id) (\(hex(self.length)) bytes)")
        }
        if offset % UInt64(pageSize) != 0 || length % UInt64(pageSize) != 0 {
            return ProtocolError(code: .misaligned, message: "range \(hex(offset))+\(hex(length)) is not a multiple of region \(id)'s \(pageSize)-byte pages")
        }
        return nil
    }

    /// The bytes of `[offset, offset+length)`: in place, or read into `scratch` (at least
    /// `length` bytes) when they are another process's.
    func bytes(offset: UInt64, length: UInt64, scratch: UnsafeMutableRawPointer) throws(KernelError) -> UnsafeRawBufferPointer {
        if let base { return UnsafeRawBufferPointer(start: base + Int(offset), count: Int(length)) }
        try process!.read(remoteBase + offset, into: scratch, count: Int(length))
        return UnsafeRawBufferPointer(start: scratch, count: Int(length))
    }

    /// Splits a range into runs that are holes (all zero, from the file's extents) and runs
    /// that may carry data, in page units. Zero pages inside data runs are found later, by
    /// content (``zeroRuns(_:pageSize:)``).
    func extentRuns(offset: UInt64, length: UInt64) -> [(range: Range<UInt64>, hole: Bool)] {
        var result: [(range: Range<UInt64>, hole: Bool)] = []
        let step = UInt64(pageSize)
        var at = offset
        let end = offset + length
        while at < end {
            guard let extent = firstExtent(endingAfter: at) else {
                result.append((at..<end, true)) // past the last extent: all hole
                break
            }
            // A hole up to the page holding the extent's first byte goes in one step.
            let dataStart = UInt64(extent.lowerBound) / step * step
            if dataStart > at {
                let holeEnd = min(end, dataStart)
                result.append((at..<holeEnd, true))
                at = holeEnd
                continue
            }
            // One search per extent, not per page: every page the extent touches is data.
            let dataEnd = min(end, (UInt64(extent.upperBound) + step - 1) / step * step)
            if let last = result.last, !last.hole, last.range.upperBound == at {
                result[result.count - 1].range = last.range.lowerBound..<dataEnd
            } else {
                result.append((at..<dataEnd, false))
            }
            at = dataEnd
        }
        return result
    }

    /// The first data extent that ends after `offset` (binary search: extents are sorted and
    /// disjoint, and a sparse file can have tens of thousands of them).
    private func firstExtent(endingAfter offset: UInt64) -> Range<Int>? {
        var lo = 0, hi = dataExtents.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if UInt64(dataExtents[mid].upperBound) > offset { hi = mid } else { lo = mid + 1 }
        }
        return lo < dataExtents.count ? dataExtents[lo] : nil
    }
}

/// A served file and its read-only mapping, kept alive together.
final class FileBacking: @unchecked Sendable {
    let file: MemoryFile
    let mapping: MemoryMapping
    init(file: MemoryFile, mapping: consuming MemoryMapping) {
        self.file = file
        self.mapping = mapping
    }
}
