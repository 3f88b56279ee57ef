/// One mapping of a served region into the workload's address space: bytes
/// `[regionOffset, regionOffset + size)` of the region live at `[base, base + size)`.
/// The same fields as Firecracker's `GuestRegionUffdMapping`.
public struct RegionMapping: Equatable, Sendable {
    public var base: UInt64
    public var size: UInt64
    public var regionOffset: UInt64
    public var pageSize: Int

    public init(base: UInt64, size: UInt64, regionOffset: UInt64, pageSize: Int) {
        self.base = base
        self.size = size
        self.regionOffset = regionOffset
        self.pageSize = pageSize
    }

    /// The page sizes a mapping may have: x86-64's base page and its two huge page sizes.
    public static let pageSizes: Set<UInt64> = [4096, 2 << 20, 1 << 30]

    /// The handoff message's bytes for `mappings`, as Firecracker writes them but with
    /// `page_size` only (Firecracker adds `page_size_kib`, deprecated; see ``decodeArray(_:)``).
    public static func encodeArray(_ mappings: [RegionMapping]) -> [UInt8] {
        JSONWriter.encode(.array(mappings.map { m in
            .object([
                ("base_host_virt_addr", .unsigned(m.base)),
                ("size", .unsigned(m.size)),
                ("offset", .unsigned(m.regionOffset)),
                ("page_size", .unsigned(UInt64(m.pageSize))),
            ])
        }))
    }

    /// Decodes the handoff message: a JSON array of one or more
    /// `{"base_host_virt_addr","size","offset","page_size"}` objects (Protocols/handoff.md).
    /// Every number is an exact unsigned 64-bit integer; the page size is 4 KiB, 2 MiB or
    /// 1 GiB; size is nonzero; base, size and offset are multiples of the page size; neither
    /// base + size nor offset + size passes 2^64; no two mappings share an address. Unknown
    /// fields are ignored, as Firecracker's serde does.
    public static func decodeArray(_ bytes: [UInt8]) throws(HandoffFormatError) -> [RegionMapping] {
        let value: JSONValue
        do { value = try JSONReader.parse(bytes, limits: .handoff) } catch { throw .notJSON(error) }
        if case .string(let text)? = value["error"] { throw .workloadReported(text) }
        guard case .array(let items) = value else { throw .notAnArray(found: value.kind) }
        guard !items.isEmpty else { throw .noMappings }
        var mappings: [RegionMapping] = []
        mappings.reserveCapacity(items.count)
        for (i, item) in items.enumerated() { mappings.append(try decodeOne(item, index: i)) }
        try refuseOverlaps(mappings)
        return mappings
    }

    private static func decodeOne(_ item: JSONValue, index i: Int) throws(HandoffFormatError) -> RegionMapping {
        guard case .object = item else { throw .notAnObject(.mapping(i), found: item.kind) }
        let base = try unsignedField(item, "base_host_virt_addr", at: .mapping(i))
        let size = try unsignedField(item, "size", at: .mapping(i))
        let offset = try unsignedField(item, "offset", at: .mapping(i))
        let pageSize = try pageSizeField(item, index: i)
        guard size > 0 else { throw .zeroSize(.mapping(i)) }
        for (field, v) in [("base_host_virt_addr", base), ("size", size), ("offset", offset)] where v % pageSize != 0 {
            throw .misaligned(mapping: i, field: field, value: v, pageSize: pageSize)
        }
        guard base <= UInt64.max - size else { throw .rangeOverflows(.mapping(i), field: "base_host_virt_addr", start: base, size: size) }
        guard offset <= UInt64.max - size else { throw .rangeOverflows(.mapping(i), field: "offset", start: offset, size: size) }
        return RegionMapping(base: base, size: size, regionOffset: offset, pageSize: Int(pageSize))
    }

    /// `page_size` in bytes, else `page_size_kib`. Firecracker before `page_size` existed sent
    /// `page_size_kib` in KiB (4, 2048); Firecracker since sends both, with bytes in
    /// `page_size_kib` too (4096), a known slip it keeps for compatibility. The two readings
    /// never collide (4 KiB, 2 MiB and 1 GiB in bytes are no valid size in KiB and the other
    /// way round), so either is accepted.
    private static func pageSizeField(_ item: JSONValue, index i: Int) throws(HandoffFormatError) -> UInt64 {
        var bytes: UInt64?
        if item["page_size"] != nil {
            let p = try unsignedField(item, "page_size", at: .mapping(i))
            guard pageSizes.contains(p) else { throw .unsupportedPageSize(mapping: i, field: "page_size", value: p) }
            bytes = p
        }
        guard item["page_size_kib"] != nil else {
            guard let bytes else { throw .missingPageSize(mapping: i) }
            return bytes
        }
        let k = try unsignedField(item, "page_size_kib", at: .mapping(i))
        // Multiplied only when it is one of the sizes in KiB: no overflow whatever k is.
        let fromKiB: UInt64? = pageSizes.contains(k) ? k : pageSizes.map { $0 / 1024 }.contains(k) ? k * 1024 : nil
        guard let fromKiB else { throw .unsupportedPageSize(mapping: i, field: "page_size_kib", value: k) }
        if let bytes, bytes != fromKiB { throw .conflictingPageSizes(mapping: i, pageSize: bytes, pageSizeKiB: k) }
        return fromKiB
    }

    /// Overlapping mappings are refused: the resolver maps a faulting address to the first
    /// mapping holding it, so an address in two would be filled from one of two region
    /// offsets by accident of order. (Two mappings of the same region bytes at different
    /// addresses are allowed: an alias is still unambiguous per address.)
    private static func refuseOverlaps(_ mappings: [RegionMapping]) throws(HandoffFormatError) {
        let order = mappings.indices.sorted { mappings[$0].base < mappings[$1].base }
        for (a, b) in zip(order, order.dropFirst()) where mappings[a].base + mappings[a].size > mappings[b].base {
            throw .overlappingMappings(first: min(a, b), second: max(a, b))
        }
    }
}

/// The field `name` of `object` as an exact unsigned integer.
func unsignedField(_ object: JSONValue, _ name: String, at: HandoffLocation) throws(HandoffFormatError) -> UInt64 {
    guard let v = object[name] else { throw .missingField(at, field: name) }
    switch v.unsignedInteger {
    case .success(let n): return n
    case .failure(let problem):
        let text = if case .number(let t) = v { t } else { v.kind }
        throw .notAnUnsignedInteger(at, field: name, text: text, problem: problem)
    }
}
