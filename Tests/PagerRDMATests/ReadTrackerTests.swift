import PagerRDMA
import Testing

@Suite("RDMA: staging slots and READs in flight")
struct ReadTrackerTests {
    @Test("runs of adjacent slots, first fit, and a freed run is found again")
    func slots() {
        var slots = SlotAllocator(count: 8)
        #expect(slots.allocate(3) == 0..<3)
        #expect(slots.allocate(4) == 3..<7)
        #expect(slots.allocate(2) == nil)
        slots.free(0..<3)
        #expect(slots.allocate(2) == 0..<2)
        #expect(slots.allocate(1) == 2..<3)
        #expect(slots.allocate(1) == 7..<8)
        #expect(slots.inUse == 8)
    }

    @Test("a completion hands out its own slots once; its id is stale afterwards")
    func success() throws {
        var tracker = ReadTracker(slots: 16)
        let target = ReadTarget(region: 1, offset: 0x4000, length: 3 * 4096)
        let began1 = tracker.begin(target, slotCount: 3)
        let (id, run) = try #require(began1)
        #expect(run == 0..<3)
        #expect(tracker.complete(id, .success) == .arrived(target, slots: run))
        #expect(tracker.complete(id, .success) == .stale(id))
        #expect(tracker.slotsInUse == 3)
        tracker.release(run)
        #expect(tracker.slotsInUse == 0)
    }

    @Test("a failed or flushed READ frees its slots and gives the target back")
    func failure() throws {
        var tracker = ReadTracker(slots: 4)
        let a = ReadTarget(region: 0, offset: 0, length: 4096)
        let b = ReadTarget(region: 0, offset: 4096, length: 4096)
        let began2 = tracker.begin(a, slotCount: 1)
        let (idA, _) = try #require(began2)
        let began3 = tracker.begin(b, slotCount: 1)
        let (idB, _) = try #require(began3)
        let error = CompletionStatus.failed(status: 10, detail: "remote access error")
        #expect(tracker.complete(idA, error) == .failed(a, error))
        #expect(tracker.complete(idB, .flushed) == .failed(b, .flushed))
        #expect(tracker.slotsInUse == 0 && tracker.pending == 0)
    }

    @Test("reused slots get a new generation: the old request's completion is stale")
    func generations() throws {
        var tracker = ReadTracker(slots: 1)
        let first = ReadTarget(region: 0, offset: 0, length: 4096)
        let began4 = tracker.begin(first, slotCount: 1)
        let (old, run) = try #require(began4)
        #expect(tracker.abandonAll() == [first])
        let second = ReadTarget(region: 0, offset: 8192, length: 4096)
        let began5 = tracker.begin(second, slotCount: 1)
        let (new, sameRun) = try #require(began5)
        #expect(run == sameRun && old != new)
        #expect(tracker.complete(old, .success) == .stale(old))
        #expect(tracker.complete(new, .success) == .arrived(second, slots: sameRun))
    }

    @Test("ids carry their pool: another pool's id is stale here")
    func pools() throws {
        var small = ReadTracker(slots: 4, pool: 0)
        var huge = ReadTracker(slots: 4, pool: 1)
        let target = ReadTarget(region: 0, offset: 0, length: 4096)
        let began6 = small.begin(target, slotCount: 1)
        let (idSmall, _) = try #require(began6)
        let began7 = huge.begin(target, slotCount: 1)
        let (idHuge, _) = try #require(began7)
        #expect(idSmall.pool == 0 && idHuge.pool == 1)
        #expect(huge.complete(idSmall, .success) == .stale(idSmall))
        #expect(small.cancel(idHuge) == nil)
        #expect(small.cancel(idSmall) == target)
    }

    @Test("abandoning returns every READ in flight, in slot order, and frees the pool")
    func abandon() throws {
        var tracker = ReadTracker(slots: 8)
        let targets = (0..<4).map { ReadTarget(region: 2, offset: UInt64($0) * 8192, length: 8192) }
        for t in targets { #expect(tracker.begin(t, slotCount: 2) != nil) }
        #expect(tracker.begin(targets[0], slotCount: 1) == nil)
        #expect(tracker.abandonAll() == targets)
        #expect(tracker.pending == 0 && tracker.slotsInUse == 0)
    }

    @Test("grants: a READ goes where the grant says, only inside it")
    func grants() throws {
        var keys = RemoteKeys()
        try keys.record(.init(region: 1, rkey: 0x1234, address: 0x7f00_0000_0000, length: 1 << 20), regionLength: 1 << 20)
        #expect(keys.remote(for: ReadTarget(region: 1, offset: 0x1000, length: 4096)) == .init(address: 0x7f00_0000_1000, rkey: 0x1234))
        #expect(keys.remote(for: ReadTarget(region: 1, offset: (1 << 20) - 4096, length: 8192)) == nil)
        #expect(keys.remote(for: ReadTarget(region: 2, offset: 0, length: 4096)) == nil)
        #expect(keys.remote(for: ReadTarget(region: 1, offset: .max - 10, length: 4096)) == nil)
        #expect(throws: RemoteKeyError.unknownRegion(9)) { try keys.record(.init(region: 9, rkey: 1, address: 0, length: 1), regionLength: nil) }
        #expect(throws: RemoteKeyError.badLength(region: 1, length: 0, regionLength: 4096)) {
            try keys.record(.init(region: 1, rkey: 1, address: 0, length: 0), regionLength: 4096)
        }
        #expect(throws: RemoteKeyError.badLength(region: 1, length: 8192, regionLength: 4096)) {
            try keys.record(.init(region: 1, rkey: 1, address: 0, length: 8192), regionLength: 4096)
        }
        #expect(throws: RemoteKeyError.addressOverflow(region: 1, address: .max, length: 4096)) {
            try keys.record(.init(region: 1, rkey: 1, address: .max, length: 4096), regionLength: 4096)
        }
    }
}
