import PagerKernel
import Testing

/// The daemon-to-guardian record: exact bytes, round trips, and strict refusals (the guardian
/// must never act on a range it did not get whole).
@Suite("Guardian records")
struct GuardianRecordTests {
    @Test("a guard record encodes to its 40 little-endian bytes and back")
    func goldenBytes() {
        let r = GuardianRecord(operation: .guardRange, guardID: 0x0102_0304,
                               range: AddressRange(start: 0x7F00_0020_0000, length: 0x40_0000), pageSize: 0x20_0000, owner: 0x1234)
        let bytes = r.bytes
        #expect(bytes == [1, 0, 0, 0, 4, 3, 2, 1,
                          0x00, 0x00, 0x20, 0x00, 0x00, 0x7F, 0, 0,
                          0x00, 0x00, 0x40, 0, 0, 0, 0, 0,
                          0x00, 0x00, 0x20, 0, 0, 0, 0, 0,
                          0x34, 0x12, 0, 0, 0, 0, 0, 0])
        #expect(GuardianRecord(bytes: bytes) == r)
        let release = GuardianRecord(operation: .release, guardID: 7)
        #expect(GuardianRecord(bytes: release.bytes) == release)
    }

    @Test("refused: wrong length, unknown operation, bad page size, empty, misaligned or wrapping ranges")
    func refusals() {
        let good = GuardianRecord(operation: .guardRange, guardID: 1, range: AddressRange(start: 0x1000, length: 0x2000), pageSize: 4096)
        #expect(GuardianRecord(bytes: Array(good.bytes.dropLast())) == nil)
        #expect(GuardianRecord(bytes: good.bytes + [0]) == nil)
        var unknown = good.bytes
        unknown[0] = 3
        #expect(GuardianRecord(bytes: unknown) == nil)
        var reserved = good.bytes
        reserved[39] = 1
        #expect(GuardianRecord(bytes: reserved) == nil)
        func with(start: UInt64 = 0x1000, length: UInt64 = 0x2000, pageSize: UInt64 = 4096) -> GuardianRecord? {
            GuardianRecord(bytes: GuardianRecord(operation: .guardRange, guardID: 1, range: AddressRange(start: start, length: length), pageSize: pageSize).bytes)
        }
        #expect(with() == good)
        #expect(with(pageSize: 0) == nil)
        #expect(with(pageSize: 2048) == nil)
        #expect(with(pageSize: 12288) == nil)
        #expect(with(pageSize: 2 << 30) == nil)
        #expect(with(length: 0) == nil)
        #expect(with(start: 0x1800) == nil)
        #expect(with(length: 0x2800) == nil)
        #expect(with(start: UInt64.max - 0xFFF, length: 0x2000) == nil)
        #expect(with(start: 0x20_0000, length: 0x20_0000, pageSize: 0x20_0000) != nil)
    }
}
