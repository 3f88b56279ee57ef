import PagerCore
import Testing

@Suite("MappingTable: region pages and workload addresses")
struct MappingTableTests {
    // Two spans of 4 KiB units: region pages 0..<4 at 0x10000, region pages 8..<10 at 0x40000.
    static let table = MappingTable(unit: 4096, spans: [
        .init(base: 0x10000, size: 0x4000, regionOffset: 0),
        .init(base: 0x40000, size: 0x2000, regionOffset: 0x8000),
    ])

    @Test("addresses map to region pages and back, with the gaps uncovered")
    func bothWays() {
        let t = Self.table
        #expect(t.pageCount == 10)
        #expect(t.uncovered == [4..<8])
        #expect(t.page(of: 0x10000) == 0 && t.page(of: 0x13fff) == 3 && t.page(of: 0x14000) == nil)
        #expect(t.page(of: 0x41234) == 9 && t.page(of: 0x3ffff) == nil)
        for page in [0, 3, 8, 9] {
            let d = t.destinations(of: page..<page + 1)
            #expect(d.count == 1)
            #expect(t.page(of: d[0].address) == page)
        }
        let split = t.destinations(of: 2..<10)
        #expect(split.map(\.pages) == [2..<4, 8..<10])
        #expect(split.map(\.address) == [0x12000, 0x40000])
    }

    @Test("address ranges round out to whole units and clip to the spans")
    func addressRanges() {
        let t = Self.table
        #expect(t.pages(inAddresses: 0x10800, 0x11001) == [0..<2])
        #expect(t.pages(inAddresses: 0, 0x100000) == [0..<4, 8..<10])
        #expect(t.pages(inAddresses: 0x20000, 0x30000).isEmpty)
    }

    @Test("a remap moves the spans wholly inside it, and only those")
    func remap() {
        var t = Self.table
        t.remap(from: 0x40000, to: 0x90000, length: 0x2000)
        #expect(t.page(of: 0x90000) == 8 && t.page(of: 0x40000) == nil && t.page(of: 0x10000) == 0)
        t.remap(from: 0x10000, to: 0xA0000, length: 0x1000) // only part of the first span: not followed
        #expect(t.page(of: 0x10000) == 0)
    }

    @Test("a region far larger than the mappings tracks only what they cover")
    func hugeRegion() {
        let t = MappingTable(unit: 4096, spans: [.init(base: 0x10000, size: 0x1000, regionOffset: 1 << 40)])
        #expect(t.pageCount == (1 << 28) + 1)
        let small = MappingTable(unit: 2 << 20, spans: [.init(base: 0x4000_0000, size: 4 << 20, regionOffset: 0)])
        #expect(small.pageCount == 2 && small.uncovered.isEmpty)
    }
}

@Suite("WaitingFaults: the book of waits and its review")
struct WaitingFaultsTests {
    static let ms: UInt64 = 1_000_000

    @Test("a wait keeps its first fault time and ends with its latency")
    func latencies() {
        var book = WaitingFaults(pageCount: 16)
        book.note(page: 3, at: 100)
        book.note(page: 3, at: 500) // a repeated fault
        book.note(page: 5, at: 200)
        #expect(book.waits(on: 0..<4) && !book.waits(on: 6..<16))
        #expect(book.settle(2..<5, at: 1000) == [900])
        #expect(book.count == 1)
        book.forget(0..<16)
        #expect(book.isEmpty && book.settle(0..<16, at: 2000).isEmpty)
    }

    @Test("a resume: the longest wait is the oldest fault's; urgent marks are forgotten, so waits ask again")
    func resume() {
        var book = WaitingFaults(pageCount: 16)
        #expect(book.longestWait(now: 50) == 0)
        book.note(page: 3, at: 100)
        book.note(page: 9, at: 40)
        #expect(book.longestWait(now: 1_000) == 960)
        book.markUrgent(3..<4)
        book.forgetUrgent()
        #expect(!book.askedUrgently(3))
    }

    @Test("a prefetch-only wait escalates only after 1 ms with the push silent for 1 ms")
    func escalation() {
        var pages = RegionPages(pageCount: 16)
        _ = pages.request(0..<8)  // in flight (as prefetch)
        var book = WaitingFaults(pageCount: 16)
        book.note(page: 2, at: 10 * Self.ms)
        let none: (Int) -> Bool = { _ in false }
        // Waited 0.5 ms: not yet, but review again soon.
        var r = book.review(pages, now: 10 * Self.ms + Self.ms / 2, lastPushFrame: 0, staged: none)
        #expect(r.escalate.isEmpty && r.slow)
        // Waited 2 ms, push frames still arriving: on its way.
        r = book.review(pages, now: 12 * Self.ms, lastPushFrame: 12 * Self.ms - Self.ms / 2, staged: none)
        #expect(r.escalate.isEmpty && r.slow)
        // Waited 2 ms, push silent 2 ms: escalate.
        r = book.review(pages, now: 12 * Self.ms, lastPushFrame: 10 * Self.ms, staged: none)
        #expect(r.escalate == [2] && !r.slow)
        // Once asked urgently, never again; a staged page never.
        book.markUrgent(2..<3)
        #expect(book.review(pages, now: 20 * Self.ms, lastPushFrame: 0, staged: none) == .init())
        book.note(page: 4, at: 0)
        #expect(book.review(pages, now: 20 * Self.ms, lastPushFrame: 0, staged: { $0 == 4 }) == .init())
    }

    @Test("a waited-on page back to missing is asked again; resident ones are left alone")
    func missingAgain() {
        var pages = RegionPages(pageCount: 16)
        _ = pages.request(0..<8)
        _ = pages.accept(0..<4)
        pages.invalidate(6..<8) // a retried install
        var book = WaitingFaults(pageCount: 16)
        for p in [1, 7, 6] { book.note(page: p, at: 0) }
        let r = book.review(pages, now: 5 * Self.ms, lastPushFrame: 5 * Self.ms, staged: { _ in false })
        #expect(r.missingAgain == [6, 7] && r.escalate.isEmpty && !r.slow)
    }
}

@Suite("FaultAction: what a fault needs, by the page's state")
struct FaultActionTests {
    @Test("every state and flag combination")
    func table() {
        for staged in [false, true] {
            for asked in [false, true] {
                for sequential in [false, true] {
                    let decide = { FaultAction.decide($0, staged: staged, askedUrgently: asked, sequentialScan: sequential) }
                    // Never a bare wake or a wait on a page that is not on its way.
                    #expect(decide(.discarded) == .installZeros)
                    #expect(decide(.resident) == .installZeros)
                    #expect(decide(.missing) == .fetch)
                    let inFlight: FaultAction = staged ? .installStaged : (!asked && !sequential ? .askUrgently : .wait)
                    #expect(decide(.inFlight) == inFlight, "staged \(staged) asked \(asked) sequential \(sequential)")
                }
            }
        }
    }
}
