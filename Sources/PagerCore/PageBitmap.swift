/// A fixed-size set of page indices, one bit per page (a 1 GiB region of 4 KiB pages
/// takes 32 KiB). Range operations work a word at a time.
public struct PageBitmap: Equatable, Sendable {
    public let count: Int
    private var words: [UInt64]
    public private(set) var population = 0

    public init(count: Int) {
        precondition(count >= 0)
        self.count = count
        words = Array(repeating: 0, count: (count + 63) / 64)
    }

    @inline(__always)
    public func contains(_ i: Int) -> Bool {
        precondition(i >= 0 && i < count, "page \(i) out of 0..<\(count)")
        return words[i >> 6] & (1 << UInt64(i & 63)) != 0
    }

    /// Sets bits in `range`; returns how many were newly set.
    @discardableResult
    public mutating func insert(_ range: Range<Int>) -> Int {
        var added = 0
        PageBitmap.forEachWord(range, count: count) { w, mask in
            added += (mask & ~words[w]).nonzeroBitCount
            words[w] |= mask
        }
        population += added
        return added
    }

    /// Clears bits in `range`; returns how many were set before.
    @discardableResult
    public mutating func remove(_ range: Range<Int>) -> Int {
        var removed = 0
        PageBitmap.forEachWord(range, count: count) { w, mask in
            removed += (mask & words[w]).nonzeroBitCount
            words[w] &= ~mask
        }
        population -= removed
        return removed
    }

    @discardableResult
    public mutating func insert(_ i: Int) -> Bool { insert(i..<i + 1) == 1 }
    @discardableResult
    public mutating func remove(_ i: Int) -> Bool { remove(i..<i + 1) == 1 }

    /// The first index `>= from` whose bit equals `value`, or nil.
    public func first(_ value: Bool, from: Int) -> Int? {
        guard from < count else { return nil }
        var w = from >> 6
        var word = (value ? words[w] : ~words[w]) & (~0 << UInt64(from & 63))
        while true {
            if word != 0 {
                let i = (w << 6) + word.trailingZeroBitCount
                return i < count ? i : nil
            }
            w += 1
            if w == words.count { return nil }
            word = value ? words[w] : ~words[w]
        }
    }

    /// Maximal runs of set bits within `range`, in order.
    public func runs(in range: Range<Int>) -> [Range<Int>] {
        var result: [Range<Int>] = []
        var i = range.lowerBound
        while i < range.upperBound, let start = first(true, from: i), start < range.upperBound {
            let end = min(first(false, from: start) ?? count, range.upperBound)
            result.append(start..<end)
            i = end
        }
        return result
    }

    /// The first index in `from..<end` whose bit is clear in all of `maps` (same count).
    public static func firstClearInAll(_ maps: [PageBitmap], from: Int, below end: Int) -> Int? {
        guard from < end, let count = maps.first?.count else { return nil }
        precondition(end <= count)
        var w = from >> 6
        var word = ~maps.reduce(UInt64(0)) { $0 | $1.words[w] } & (~0 << UInt64(from & 63))
        while true {
            if word != 0 {
                let i = (w << 6) + word.trailingZeroBitCount
                return i < end ? i : nil
            }
            w += 1
            if w << 6 >= end { return nil }
            word = ~maps.reduce(UInt64(0)) { $0 | $1.words[w] }
        }
    }

    @inline(__always)
    private static func forEachWord(_ range: Range<Int>, count: Int, _ body: (Int, UInt64) -> Void) {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "pages \(range) out of 0..<\(count)")
        guard !range.isEmpty else { return }
        let first = range.lowerBound >> 6, last = (range.upperBound - 1) >> 6
        for w in first...last {
            let lo = w == first ? range.lowerBound & 63 : 0
            let hi = w == last ? ((range.upperBound - 1) & 63) + 1 : 64
            let mask: UInt64 = (hi == 64 ? ~0 : (1 << UInt64(hi)) - 1) & ~((1 << UInt64(lo)) - 1)
            body(w, mask)
        }
    }
}
