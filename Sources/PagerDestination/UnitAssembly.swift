import PagerCore

/// Gathers the pieces of a unit (a huge page) that arrive in several frames on one channel.
/// The source sends the runs of one request consecutively, but may put a prefetch answer
/// between two push chunks of one huge page: two units are assembled at a time, and an
/// unfinished unit pushed out by a third is dropped (it is fetched again).
final class UnitAssembly {
    private enum Slot {
        case free
        /// Unit `index` is being gathered: `filled` 4 KiB pieces of it are in the buffer.
        case assembling(index: Int, filled: PageBitmap, lastUse: Int)
    }

    /// Two units at a time: the push sends a huge page in several chunks and may answer a
    /// prefetch request (another unit, sent whole) between two of them.
    private var slots: [Slot] = [.free, .free]
    private let buffers: [UnsafeMutableRawPointer]
    private let unit: Int
    private var uses = 0

    init(unit: Int) {
        self.unit = unit
        buffers = (0..<2).map { _ in .allocate(byteCount: unit, alignment: unit) }
    }

    deinit { for b in buffers { b.deallocate() } }

    /// Adds bytes (nil: zeros) at `at` within unit `index`. Returns the unit's bytes when the
    /// unit is whole (valid until the next call); the slot is free again after that.
    func add(unit index: Int, at: Int, length: Int, from source: UnsafeRawPointer?) -> UnsafeRawPointer? {
        uses += 1
        let i = slot(for: index)
        guard case .assembling(_, var filled, _) = slots[i] else { preconditionFailure("slot(for:) assigns the slot") }
        let buffer = buffers[i]
        if let source { (buffer + at).copyMemory(from: source, byteCount: length) }
        else { (buffer + at).initializeMemory(as: UInt8.self, repeating: 0, count: length) }
        filled.insert(at / 4096..<(at + length) / 4096)
        guard filled.population == filled.count else {
            slots[i] = .assembling(index: index, filled: filled, lastUse: uses)
            return nil
        }
        slots[i] = .free
        return UnsafeRawPointer(buffer)
    }

    /// The slot gathering `index`, else a free one, else the one untouched longest (its unit
    /// stays missing and is asked for again after the push: nothing wrong is ever installed).
    private func slot(for index: Int) -> Int {
        for (i, s) in slots.enumerated() {
            if case .assembling(index, _, _) = s { return i }
        }
        let chosen = slots.indices.min { age(slots[$0]) < age(slots[$1]) }!
        slots[chosen] = .assembling(index: index, filled: PageBitmap(count: unit / 4096), lastUse: uses)
        return chosen
    }

    /// Free slots first, then the least recently used.
    private func age(_ s: Slot) -> Int {
        if case .assembling(_, _, let lastUse) = s { return lastUse + 1 }
        return 0
    }
}
