@testable import PagerDestination
import Testing

/// Pure logic: gathering a huge page from the frames it arrives in (no kernel involved).
@Suite("Huge-page assembly")
struct AssemblyTests {
    static let unit = 2 << 20

    /// Bytes of piece `at` of unit `index`: distinct per unit and offset.
    static func piece(_ index: Int, _ at: Int, _ length: Int) -> [UInt8] {
        (0..<length).map { UInt8(truncatingIfNeeded: index &* 31 &+ (at + $0) / 4096 &* 7 &+ $0) }
    }

    static func add(_ a: UnitAssembly, _ index: Int, _ at: Int, _ length: Int, zero: Bool = false) -> [UInt8]? {
        let bytes = piece(index, at, length)
        let whole = zero ? a.add(unit: index, at: at, length: length, from: nil)
                         : bytes.withUnsafeBytes { a.add(unit: index, at: at, length: length, from: $0.baseAddress!) }
        return whole.map { Array(UnsafeRawBufferPointer(start: $0, count: unit)) }
    }

    @Test("a huge page pushed in 512 KiB chunks completes although another unit arrives whole between two chunks")
    func interleaved() {
        let a = UnitAssembly(unit: Self.unit)
        let chunk = 512 << 10
        #expect(Self.add(a, 5, 0, chunk) == nil)
        #expect(Self.add(a, 5, chunk, chunk) == nil)
        // A prefetch answer for unit 9, in two runs (data, then zeros).
        #expect(Self.add(a, 9, 0, Self.unit / 2) == nil)
        let nine = Self.add(a, 9, Self.unit / 2, Self.unit / 2, zero: true)
        #expect(nine == Self.piece(9, 0, Self.unit / 2) + [UInt8](repeating: 0, count: Self.unit / 2))
        #expect(Self.add(a, 5, 2 * chunk, chunk) == nil)
        let five = Self.add(a, 5, 3 * chunk, chunk)
        let expected = (0..<4).flatMap { Self.piece(5, $0 * chunk, chunk) }
        #expect(five == expected)
    }

    @Test("a third unit takes the slot used longest ago; the unit pushed out never completes from its old pieces")
    func eviction() {
        let a = UnitAssembly(unit: Self.unit)
        let half = Self.unit / 2
        #expect(Self.add(a, 1, 0, half) == nil)
        #expect(Self.add(a, 2, 0, half) == nil)
        #expect(Self.add(a, 3, 0, half) == nil) // pushes out unit 1
        // Unit 1's second half alone is not a whole unit: its first half was dropped.
        #expect(Self.add(a, 1, half, half) == nil)
        // Unit 3 (kept) completes with the right bytes.
        #expect(Self.add(a, 3, half, half) == Self.piece(3, 0, half) + Self.piece(3, half, half))
    }
}
