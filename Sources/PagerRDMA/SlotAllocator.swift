/// Runs of contiguous equal-size slots in a staging pool (first fit).
///
/// A READ lands in a run of slots, and a run of pages that are adjacent in the region lands in
/// adjacent slots, so that one `UFFDIO_COPY` installs the whole run from the pool. The pool is
/// small (hundreds of slots), so a linear scan costs less than any index would.
public struct SlotAllocator: Sendable {
    /// Slots in the pool.
    public let count: Int
    private var used: [Bool]
    /// Slots in use.
    public private(set) var inUse = 0

    public init(count: Int) {
        precondition(count > 0, "a staging pool needs at least one slot")
        self.count = count
        used = [Bool](repeating: false, count: count)
    }

    /// Takes `length` adjacent free slots, the lowest such run; nil when no run that long is free.
    public mutating func allocate(_ length: Int) -> Range<Int>? {
        precondition(length > 0 && length <= count, "a run of \(length) slots in a pool of \(count)")
        var start = 0
        while start + length <= count {
            if let taken = (start..<start + length).last(where: { used[$0] }) {
                start = taken + 1
                continue
            }
            for slot in start..<start + length { used[slot] = true }
            inUse += length
            return start..<start + length
        }
        return nil
    }

    /// Gives a run back. Freeing a slot that is not in use is a bookkeeping bug: it traps.
    public mutating func free(_ run: Range<Int>) {
        for slot in run {
            precondition(used[slot], "slot \(slot) freed while free")
            used[slot] = false
        }
        inUse -= run.count
    }
}
