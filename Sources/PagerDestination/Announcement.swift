import PagerKernel
import PagerTransport
import PagerWire

/// What a source announces (WELCOME's region count, then one REGION per region), checked
/// against fixed limits before the destination reads, keeps or allocates anything by it, and
/// then the region a handoff maps onto checked against that mapping, before any state for the
/// region is made. The source is not trusted: every number it sends is checked here or by the
/// codec before it sizes a loop or an allocation.
///
/// The codec already refuses a REGION with a page shift other than 12, 21 or 30, or a length
/// that is zero or not a multiple of its page size; ``check(region:)`` checks them again so
/// that a descriptor made any other way gets the same guarantee.
public enum Announcement {
    /// Regions one session may announce. A source serves one region per served file or per
    /// guest memory backend (`pagerd source` one per `--region`, QEMU's guest RAM one, a
    /// Firecracker snapshot a handful), so 1024 is far above any real source; the bound keeps
    /// what a destination holds (a descriptor of at most 300 bytes per region) and sends (a
    /// COMPLETE for each region it does not map) at a few hundred KiB and frames.
    public static let maxRegions = 1024

    /// The longest region: 2^47 bytes, the x86-64 user address space (4-level page tables;
    /// with 5-level ones Linux still maps below 2^47 unless asked for more). A region is served
    /// to memory of exactly its length (``check(region:serves:)``), and no process has more.
    public static let maxRegionLength: UInt64 = 1 << 47

    /// The page shifts of v1: 4 KiB, 2 MiB and 1 GiB pages.
    public static let pageShifts: Set<UInt8> = [12, 21, 30]

    /// Why an announcement is refused: each case names the values that are wrong and the limit.
    public enum Refusal: Error, Equatable, Sendable, CustomStringConvertible {
        case tooManyRegions(announced: UInt32, limit: Int)
        case pageShift(region: UInt32, name: String, shift: UInt8)
        case zeroLength(region: UInt32, name: String)
        case tooLong(region: UInt32, name: String, length: UInt64, limit: UInt64)
        case notPageMultiple(region: UInt32, name: String, length: UInt64, pageSize: UInt64)
        case duplicateID(region: UInt32, first: String, second: String)
        /// WELCOME's count and the REGION frames read do not agree (a caller's bug, or a
        /// truncated list).
        case countMismatch(announced: UInt32, received: Int)
        case noMappings
        /// The handoff's mappings do not all have the same page size.
        case mixedPageSizes([Int])
        /// The region's pages are larger than the memory's, or do not divide them.
        case pageSizeMismatch(region: UInt32, name: String, regionPageSize: UInt64, mappingPageSize: Int)
        /// The region is not exactly as long as the part of it the memory maps.
        case lengthMismatch(region: UInt32, name: String, length: UInt64, mapped: UInt64)
        /// A mapping is not aligned to its page size, or its end overflows.
        case badMapping(base: UInt64, size: UInt64, regionOffset: UInt64, pageSize: Int)

        public var description: String {
            switch self {
            case .tooManyRegions(let n, let limit):
                "the source announces \(n) regions; at most \(limit) are accepted"
            case .pageShift(let id, let name, let shift):
                "region \(id) \"\(name)\" has page shift \(shift); 12, 21 or 30 (4 KiB, 2 MiB, 1 GiB pages) are accepted"
            case .zeroLength(let id, let name):
                "region \(id) \"\(name)\" is 0 bytes long; a region holds at least one page"
            case .tooLong(let id, let name, let length, let limit):
                "region \(id) \"\(name)\" is \(length) bytes long; at most \(limit) (2^47, the x86-64 user address space) are accepted"
            case .notPageMultiple(let id, let name, let length, let pageSize):
                "region \(id) \"\(name)\" is \(length) bytes long, not a multiple of its \(pageSize)-byte pages"
            case .duplicateID(let id, let first, let second):
                "region id \(id) is announced twice (\"\(first)\" and \"\(second)\"); ids must be unique in a session"
            case .countMismatch(let n, let got):
                "the source announced \(n) regions but \(got) REGION frames were read"
            case .noMappings:
                "the handoff maps no memory"
            case .mixedPageSizes(let sizes):
                "the handoff's mappings have different page sizes (\(sizes.map(String.init).joined(separator: ", ")) bytes); one is accepted"
            case .pageSizeMismatch(let id, let name, let regionPage, let mappingPage):
                "region \(id) \"\(name)\" has \(regionPage)-byte pages but the workload's memory has \(mappingPage)-byte pages: "
                    + "a region's pages must be no larger than the memory's and divide them"
            case .lengthMismatch(let id, let name, let length, let mapped):
                "region \(id) \"\(name)\" is \(length) bytes but the workload's memory maps \(mapped) bytes of it "
                    + "(\(length > mapped ? "longer" : "shorter") than the memory): a region must be exactly as long as the memory it is served to"
            case .badMapping(let base, let size, let offset, let pageSize):
                "mapping \(hex(base))+\(hex(size)) at region offset \(hex(offset)) is not a nonempty, overflow-free multiple of its \(pageSize)-byte pages"
            }
        }

        /// The ERROR code the destination tells the source before it closes the session.
        var code: ErrorCode {
            switch self {
            case .tooManyRegions, .tooLong: .tooLarge
            case .pageShift, .zeroLength, .notPageMultiple, .duplicateID, .countMismatch: .malformedFrame
            case .noMappings, .mixedPageSizes, .pageSizeMismatch, .lengthMismatch, .badMapping: .outOfRange
            }
        }
    }

    // MARK: What the source announces

    /// WELCOME's `region_count`, before a single REGION is read: a count above the limit is
    /// refused at once, not after reading (or waiting for) that many frames.
    public static func check(regionCount: UInt32) throws(Refusal) {
        guard regionCount <= maxRegions else { throw .tooManyRegions(announced: regionCount, limit: maxRegions) }
    }

    /// One REGION on its own: page shift, and a length that is a nonzero multiple of the page
    /// size and at most ``maxRegionLength``.
    public static func check(region r: RegionDescriptor) throws(Refusal) {
        guard pageShifts.contains(r.pageShift) else { throw .pageShift(region: r.id, name: r.name, shift: r.pageShift) }
        guard r.length > 0 else { throw .zeroLength(region: r.id, name: r.name) }
        guard r.length <= maxRegionLength else { throw .tooLong(region: r.id, name: r.name, length: r.length, limit: maxRegionLength) }
        guard r.length % r.pageSize == 0 else { throw .notPageMultiple(region: r.id, name: r.name, length: r.length, pageSize: r.pageSize) }
    }

    /// The whole announcement: the count, each region, and ids unique in the session.
    ///
    /// Names are not required to be unique: `pagerd source` names a region by its file's last
    /// path component, so two served files of the same name in different directories are a
    /// valid source (select them by id).
    public static func check(welcome: Welcome, regions: [RegionDescriptor]) throws(Refusal) {
        try check(regionCount: welcome.regionCount)
        guard regions.count == Int(welcome.regionCount) else { throw .countMismatch(announced: welcome.regionCount, received: regions.count) }
        var names: [UInt32: String] = [:]
        names.reserveCapacity(regions.count)
        for r in regions {
            try check(region: r)
            if let first = names.updateValue(r.name, forKey: r.id) { throw .duplicateID(region: r.id, first: first, second: r.name) }
        }
    }

    // MARK: The region against the memory it serves

    /// The region a handoff maps onto, against the handoff's mappings: one page size, that the
    /// region's pages divide; each mapping aligned to it; and the region exactly as long as the
    /// extent of it that the mappings cover (the end of the last one: a Firecracker handoff
    /// lays its mappings end to end in the region). A shorter region leaves memory no source
    /// can fill; a longer one is not this memory's source (another file, another size).
    ///
    /// Pure arithmetic on the mappings: nothing proportional to the region's length exists
    /// before this passes, and what is made after it is sized by the mappings.
    ///
    /// Equal page sizes are not required: a workload on 2 MiB hugetlbfs pages may be served
    /// from a tmpfs file of 4 KiB pages (each install is then one whole huge page, assembled).
    public static func check(region r: RegionDescriptor, serves mappings: [RegionMapping]) throws(Refusal) {
        try check(region: r)
        guard let unit = mappings.first?.pageSize else { throw .noMappings }
        guard mappings.allSatisfy({ $0.pageSize == unit }) else { throw .mixedPageSizes(mappings.map(\.pageSize)) }
        guard unit > 0, UInt64(unit) >= r.pageSize, UInt64(unit) % r.pageSize == 0 else {
            throw .pageSizeMismatch(region: r.id, name: r.name, regionPageSize: r.pageSize, mappingPageSize: unit)
        }
        var mapped: UInt64 = 0
        for m in mappings {
            let (end, overflow) = m.regionOffset.addingReportingOverflow(m.size)
            let u = UInt64(unit)
            guard m.size > 0, !overflow, m.size % u == 0, m.regionOffset % u == 0, m.base % u == 0 else {
                throw .badMapping(base: m.base, size: m.size, regionOffset: m.regionOffset, pageSize: unit)
            }
            mapped = max(mapped, end)
        }
        guard r.length == mapped else { throw .lengthMismatch(region: r.id, name: r.name, length: r.length, mapped: mapped) }
    }
}

extension Announcement {
    /// ``check(regionCount:)`` on a session's channel: a refusal is also told to the source
    /// (ERROR, best effort) before it is thrown.
    static func check(regionCount: UInt32, from channel: any FrameConnection) throws(Refusal) {
        do { try check(regionCount: regionCount) } catch { throw tell(error, channel) }
    }

    /// ``check(welcome:regions:)`` on a session's channel, telling the source as above.
    static func check(welcome: Welcome, regions: [RegionDescriptor], from channel: any FrameConnection) throws(Refusal) {
        do { try check(welcome: welcome, regions: regions) } catch { throw tell(error, channel) }
    }

    private static func tell(_ refusal: Refusal, _ channel: any FrameConnection) -> Refusal {
        try? channel.send(.error(ProtocolError(code: refusal.code, message: "\(refusal)")))
        return refusal
    }
}
