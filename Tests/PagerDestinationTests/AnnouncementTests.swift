@testable import PagerDestination
import PagerWire
import Testing

/// What a source announces, against the limits and against the memory a region is served to.
@Suite("Announcement")
struct AnnouncementTests {
    static func region(id: UInt32 = 1, shift: UInt8 = 12, length: UInt64 = 64 << 20, name: String = "vm.ram") -> RegionDescriptor {
        RegionDescriptor(id: id, pageShift: shift, length: length, name: name)
    }

    static func mapping(size: UInt64 = 64 << 20, offset: UInt64 = 0, pageSize: Int = 4096, base: UInt64 = 0x7f00_0000_0000) -> RegionMapping {
        RegionMapping(base: base, size: size, regionOffset: offset, pageSize: pageSize)
    }

    static func refusal(_ body: () throws(Announcement.Refusal) -> Void) -> Announcement.Refusal? {
        do { try body() } catch { return error }
        return nil
    }

    @Test("a region count above the limit is refused before any REGION is read, naming both numbers")
    func regionCount() throws {
        try Announcement.check(regionCount: 0)
        try Announcement.check(regionCount: UInt32(Announcement.maxRegions))
        let r = Self.refusal { () throws(Announcement.Refusal) in try Announcement.check(regionCount: 4_294_967_280) }
        #expect(r == .tooManyRegions(announced: 4_294_967_280, limit: 1024))
        #expect(r?.description == "the source announces 4294967280 regions; at most 1024 are accepted")
        #expect(Self.refusal { () throws(Announcement.Refusal) in try Announcement.check(regionCount: 1025) } != nil)
    }

    @Test("a region's page shift, and a length that is nonzero, a multiple of its pages and at most 2^47",
          arguments: [
              (region(length: 1 << 63, name: "huge"), "region 1 \"huge\" is 9223372036854775808 bytes long; at most 140737488355328"),
              (region(length: (1 << 47) + 4096), "is 140737488359424 bytes long; at most 140737488355328"),
              (region(length: 0), "region 1 \"vm.ram\" is 0 bytes long"),
              (region(length: 4097), "is 4097 bytes long, not a multiple of its 4096-byte pages"),
              (region(shift: 21, length: 4096), "is 4096 bytes long, not a multiple of its 2097152-byte pages"),
              (region(shift: 30, length: 2 << 20), "not a multiple of its 1073741824-byte pages"),
              (region(shift: 13), "has page shift 13; 12, 21 or 30"),
              (region(shift: 0), "has page shift 0"),
          ])
    func refusedRegion(_ r: RegionDescriptor, _ words: String) {
        let refusal = Self.refusal { () throws(Announcement.Refusal) in try Announcement.check(region: r) }
        #expect(refusal?.description.contains(words) == true, "\(String(describing: refusal))")
    }

    @Test("regions at the limits are accepted", arguments: [
        region(length: 4096), region(length: 1 << 47), region(shift: 21, length: 2 << 20), region(shift: 30, length: 1 << 30),
    ])
    func acceptedRegion(_ r: RegionDescriptor) throws {
        try Announcement.check(region: r)
    }

    @Test("a whole announcement: ids unique (names need not be), as many REGIONs as announced")
    func wholeAnnouncement() throws {
        let welcome = { (n: UInt32) in Welcome(features: [], regionCount: n, session: 1) }
        try Announcement.check(welcome: welcome(0), regions: [])
        try Announcement.check(welcome: welcome(2), regions: [Self.region(id: 1), Self.region(id: 2)])
        // Same name, different ids: two files called vm.ram in different directories.
        try Announcement.check(welcome: welcome(2), regions: [Self.region(id: 1, name: "vm.ram"), Self.region(id: 2, name: "vm.ram")])
        let dup = Self.refusal { () throws(Announcement.Refusal) in
            try Announcement.check(welcome: welcome(3), regions: [Self.region(id: 1, name: "a"), Self.region(id: 2), Self.region(id: 1, name: "b")])
        }
        #expect(dup == .duplicateID(region: 1, first: "a", second: "b"))
        #expect(dup?.description.contains("region id 1 is announced twice (\"a\" and \"b\")") == true)
        let short = Self.refusal { () throws(Announcement.Refusal) in try Announcement.check(welcome: welcome(2), regions: [Self.region()]) }
        #expect(short == .countMismatch(announced: 2, received: 1))
        let many = Self.refusal { () throws(Announcement.Refusal) in try Announcement.check(welcome: welcome(2000), regions: []) }
        #expect(many == .tooManyRegions(announced: 2000, limit: 1024))
        let bad = Self.refusal { () throws(Announcement.Refusal) in
            try Announcement.check(welcome: welcome(2), regions: [Self.region(id: 1), Self.region(id: 2, length: 1 << 63)])
        }
        #expect(bad == .tooLong(region: 2, name: "vm.ram", length: 1 << 63, limit: 1 << 47))
    }

    @Test("a region exactly as long as the memory it serves, with pages that divide the memory's, is accepted")
    func matchingMemory() throws {
        try Announcement.check(region: Self.region(), serves: [Self.mapping()])
        // A hugetlbfs workload served from a tmpfs file (4 KiB region pages, 2 MiB memory pages).
        try Announcement.check(region: Self.region(), serves: [Self.mapping(pageSize: 2 << 20)])
        try Announcement.check(region: Self.region(shift: 21), serves: [Self.mapping(pageSize: 2 << 20)])
        // Firecracker: mappings laid end to end in the region, in any order.
        try Announcement.check(region: Self.region(), serves: [Self.mapping(size: 48 << 20, offset: 16 << 20, base: 0x7f00_1000_0000),
                                                               Self.mapping(size: 16 << 20)])
    }

    @Test("a region longer or shorter than the memory, or with larger pages, is refused naming both values", arguments: [
        (region(length: 128 << 20, name: "big"), [mapping()], "region 1 \"big\" is 134217728 bytes but the workload's memory maps 67108864 bytes of it (longer"),
        (region(length: 1 << 20, name: "small"), [mapping()], "region 1 \"small\" is 1048576 bytes but the workload's memory maps 67108864 bytes of it (shorter"),
        (region(length: 1 << 47), [mapping()], "is 140737488355328 bytes but the workload's memory maps 67108864"),
        (region(shift: 21), [mapping()], "has 2097152-byte pages but the workload's memory has 4096-byte pages"),
        (region(), [mapping(size: 32 << 20), mapping(size: 32 << 20, offset: 32 << 20, pageSize: 2 << 20)], "different page sizes (4096, 2097152 bytes)"),
        (region(), [], "the handoff maps no memory"),
        (region(), [mapping(size: 4096, offset: UInt64.max - 4095)], "is not a nonempty, overflow-free multiple"),
        (region(), [mapping(size: 0)], "is not a nonempty, overflow-free multiple"),
        (region(), [mapping(size: 64 << 20, pageSize: 2 << 20, base: 0x7f00_0000_1000)], "is not a nonempty, overflow-free multiple"),
        (region(length: 1 << 63), [mapping()], "at most 140737488355328"),
    ])
    func mismatchedMemory(_ r: RegionDescriptor, _ mappings: [RegionMapping], _ words: String) {
        let refusal = Self.refusal { () throws(Announcement.Refusal) in try Announcement.check(region: r, serves: mappings) }
        #expect(refusal?.description.contains(words) == true, "\(String(describing: refusal))")
    }
}

/// A refusal on a session's channel is told to the source before the session ends.
@Suite("Announcement refusals on a channel")
struct AnnouncementChannelTests {
    @Test("too many regions: ERROR too-large with the same words, before any REGION is read")
    func toldToTheSource() {
        let channel = ScriptedConnection([])
        do {
            try Announcement.check(regionCount: 4_294_967_280, from: channel)
            Issue.record("accepted 4294967280 regions")
        } catch {
            #expect(error == .tooManyRegions(announced: 4_294_967_280, limit: 1024))
        }
        #expect(channel.sent.withLock { $0 } == [.error(ProtocolError(code: .tooLarge, message: "the source announces 4294967280 regions; at most 1024 are accepted"))])
    }

    @Test("a duplicate id: ERROR malformed-frame")
    func duplicateTold() {
        let channel = ScriptedConnection([])
        let regions = [AnnouncementTests.region(name: "a"), AnnouncementTests.region(name: "b")]
        #expect(throws: Announcement.Refusal.duplicateID(region: 1, first: "a", second: "b")) {
            try Announcement.check(welcome: Welcome(features: [], regionCount: 2, session: 1), regions: regions, from: channel)
        }
        #expect(channel.sent.withLock { $0.map(\.type) } == [.error])
    }
}
