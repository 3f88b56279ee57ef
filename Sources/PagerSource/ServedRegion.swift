import PagerKernel
import PagerWire

/// One region the source serves: a file (tmpfs, hugetlbfs or plain) mapped read-only.
public final class ServedRegion: @unchecked Sendable {
    public let id: UInt32
    public let name: String
    public let length: UInt64
    /// The page size of the backing file (4 KiB, or 2 MiB on hugetlbfs).
    public let pageSize: Int
    /// The bytes served: a read-only mapping of the file, or memory the caller owns.
    let base: UnsafeRawPointer
    /// Owns the file and its mapping when the region is a file (nil for caller-owned memory).
    private let owner: FileBacking?
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
    }

    /// Serves memory of this process (the library API: e.g. a VMM serving its own guest RAM).
    /// The caller keeps `[base, base + length)` mapped and readable while it is served.
    public init(id: UInt32, name: String, base: UnsafeRawPointer, length: Int, pageSize: Int = basePageSize) {
        precondition(length > 0 && length % pageSize == 0 && (pageSize == basePageSize || pageSize == hugePageSize))
        self.id = id
        self.name = name
        self.base = base
        self.length = UInt64(length)
        self.pageSize = pageSize
        owner = nil
        dataExtents = [0..<length]
    }

    /// Re-reads the data extents (holes) of the file.
    public func refreshExtents() throws(KernelError) {
        if let owner { dataExtents = try owner.file.dataExtents() }
    }

    /// The REGION descriptor sent to destinations.
    public var descriptor: RegionDescriptor {
        RegionDescriptor(id: id, pageShift: UInt8(pageSize.trailingZeroBitCount), length: length,
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

    /// The bytes of `[offset, offset+length)`.
    func bytes(offset: UInt64, length: UInt64) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + Int(offset), count: Int(length))
    }

    /// Splits a range into maximal runs that are all zero (holes, or pages whose bytes are
    /// all zero) and runs that carry data, in page units.
    func runs(offset: UInt64, length: UInt64) -> [(range: Range<UInt64>, zero: Bool)] {
        var result: [(range: Range<UInt64>, zero: Bool)] = []
        let step = UInt64(pageSize)
        var at = offset
        let end = offset + length
        func append(_ r: Range<UInt64>, _ zero: Bool) {
            if let last = result.last, last.zero == zero, last.range.upperBound == r.lowerBound {
                result[result.count - 1].range = last.range.lowerBound..<r.upperBound
            } else {
                result.append((r, zero))
            }
        }
        while at < end {
            guard let extent = firstExtent(endingAfter: at) else {
                append(at..<end, true) // past the last extent: all hole
                break
            }
            // A hole up to the page holding the extent's first byte goes in one step.
            let dataStart = UInt64(extent.lowerBound) / step * step
            if dataStart > at {
                let holeEnd = min(end, dataStart)
                append(at..<holeEnd, true)
                at = holeEnd
                continue
            }
            // Every page the extent touches is data unless its bytes are all zero; walk them
            // without searching the extents again (one search per extent, not per page).
            let dataEnd = min(end, (UInt64(extent.upperBound) + step - 1) / step * step)
            while at < dataEnd {
                append(at..<at + step, isZeroPage(at))
                at += step
            }
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

    private func isZeroPage(_ offset: UInt64) -> Bool {
        let words = (base + Int(offset)).assumingMemoryBound(to: UInt64.self)
        // Most data pages have a non-zero first word: decide on one cache line when possible.
        if words[0] != 0 { return false }
        var acc: UInt64 = 0
        for i in 0..<pageSize / 8 {
            acc |= words[i]
            if i & 63 == 63 && acc != 0 { return false }
        }
        return acc == 0
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
