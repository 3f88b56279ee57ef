/// Where a region's pages live in a workload's address space: each span holds bytes
/// `[regionOffset, regionOffset + size)` of the region at `[base, base + size)`, in units of
/// `unit` bytes (the mapping's page size). Pure arithmetic, no kernel: the destination's
/// address translation both ways.
public struct MappingTable: Equatable, Sendable {
    public struct Span: Equatable, Sendable {
        public var base: UInt64
        public var size: UInt64
        public var regionOffset: UInt64

        public init(base: UInt64, size: UInt64, regionOffset: UInt64) {
            self.base = base
            self.size = size
            self.regionOffset = regionOffset
        }

        var end: UInt64 { base + size }
    }

    public private(set) var spans: [Span]
    public let unit: Int
    /// One past the last region page any span covers: the destination tracks only these.
    public let pageCount: Int

    /// Spans must be unit-aligned and nonempty (the handoff parser checks this).
    public init(unit: Int, spans: [Span]) {
        precondition(unit > 0 && spans.allSatisfy { $0.size > 0 && $0.size % UInt64(unit) == 0 && $0.regionOffset % UInt64(unit) == 0 })
        self.unit = unit
        self.spans = spans
        pageCount = spans.map { Int(($0.regionOffset + $0.size) / UInt64(unit)) }.max() ?? 0
    }

    private func pages(of span: Span) -> Range<Int> {
        Int(span.regionOffset / UInt64(unit))..<Int((span.regionOffset + span.size) / UInt64(unit))
    }

    /// Region pages below ``pageCount`` that no span covers (never wanted).
    public var uncovered: [Range<Int>] {
        var covered = PageBitmap(count: pageCount)
        for s in spans { covered.insert(pages(of: s)) }
        return covered.clearRuns(in: 0..<pageCount)
    }

    /// The region page that holds `address`, or nil outside every span.
    public func page(of address: UInt64) -> Int? {
        for s in spans where address >= s.base && address < s.end {
            return Int((s.regionOffset + (address - s.base)) / UInt64(unit))
        }
        return nil
    }

    /// Region page ranges covered by addresses `[start, end)` (partial units included).
    public func pages(inAddresses start: UInt64, _ end: UInt64) -> [Range<Int>] {
        spans.compactMap { s in
            let lo = max(start, s.base), hi = min(end, s.end)
            guard lo < hi else { return nil }
            let first = Int((s.regionOffset + (lo - s.base)) / UInt64(unit))
            let last = Int((s.regionOffset + (hi - s.base) + UInt64(unit) - 1) / UInt64(unit))
            return first..<last
        }
    }

    /// Where region pages `run` live: the address of the first page and the pages, per span.
    public func destinations(of run: Range<Int>) -> [(address: UInt64, pages: Range<Int>)] {
        spans.compactMap { s in
            let own = pages(of: s)
            let lo = max(run.lowerBound, own.lowerBound), hi = min(run.upperBound, own.upperBound)
            return lo < hi ? (s.base + UInt64((lo - own.lowerBound) * unit), lo..<hi) : nil
        }
    }

    /// The workload moved `[from, from + length)` to `to` (mremap): spans wholly inside follow.
    public mutating func remap(from: UInt64, to: UInt64, length: UInt64) {
        for i in spans.indices where spans[i].base >= from && spans[i].end <= from + length {
            spans[i].base = spans[i].base - from + to
        }
    }
}
