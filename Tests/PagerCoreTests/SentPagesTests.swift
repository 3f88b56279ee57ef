import PagerCore
import Testing

@Suite("The source's sent-page map")
struct SentPagesTests {
    @Test("clearRuns are the gaps between runs, within the range")
    func clearRuns() {
        var map = PageBitmap(count: 200)
        map.insert(10..<20)
        map.insert(64..<130)
        #expect(map.clearRuns(in: 0..<200) == [0..<10, 20..<64, 130..<200])
        #expect(map.clearRuns(in: 12..<70) == [20..<64])
        #expect(map.clearRuns(in: 64..<130) == [])
        #expect(PageBitmap(count: 5).clearRuns(in: 1..<4) == [1..<4])
    }

    @Test("a RECEIVED map resets the region: held pages count as sent, every other is claimed again; other regions keep theirs")
    func resetFromReceived() {
        var pages = SentPages(pageCounts: [1: 16, 2: 4])
        pages.markAllSent(1)
        pages.markAllSent(2)
        let lostInFlight = pages.reset(1, held: [0..<3, 8..<16])
        #expect(lostInFlight == 5, "5 pages sent were lost in flight")
        #expect(pages.claimUnsent(1, from: 0, maxPages: 16) == 3..<8, "sent before the cut but not received: sent again")
        #expect(pages.claimUnsent(1, from: 0, maxPages: 16) == nil)
        #expect(pages.claimUnsent(2, from: 0, maxPages: 4) == nil, "region 2 untouched")
        let all = pages.reset(2, held: [])
        #expect(all == 4)
        #expect(pages.claimUnsent(2, from: 0, maxPages: 4) == 0..<4, "an empty map: all of it again")
        // Held pages never sent (the destination had them before this session) are not lost.
        var fresh = SentPages(pageCounts: [1: 8])
        fresh.markSent(1, 0..<2)
        let one = fresh.reset(1, held: [0..<1, 4..<8])
        #expect(one == 1)
    }

    @Test("claimUnsent(in:) claims exactly the unsent runs of a range (clipped to the region), once")
    func claimInRange() {
        var pages = SentPages(pageCounts: [1: 32])
        pages.markSent(1, 4..<8)
        pages.markSent(1, 10..<11)
        #expect(pages.claimUnsent(1, in: 2..<12) == [2..<4, 8..<10, 11..<12])
        #expect(pages.claimUnsent(1, in: 0..<12) == [0..<2], "what the first claim took is sent now")
        #expect(pages.claimUnsent(1, in: 0..<12) == [])
        #expect(pages.claimUnsent(1, in: 30..<40) == [30..<32], "clipped to the region's 32 pages")
        #expect(pages.claimUnsent(9, in: 0..<4) == [], "a region not served has no pages")
        #expect(pages.claimUnsent(1, from: 0, maxPages: 32) == 12..<30, "the push finds the rest")
    }

    @Test("claimUnsent walks from the cursor in runs of at most maxPages, wraps once, then is nil")
    func claimWrapsOnce() {
        var pages = SentPages(pageCounts: [1: 10])
        pages.markSent(1, 2..<4)
        #expect(pages.claimUnsent(1, from: 5, maxPages: 3) == 5..<8)
        #expect(pages.claimUnsent(1, from: 8, maxPages: 3) == 8..<10)
        #expect(pages.claimUnsent(1, from: 10, maxPages: 3) == 0..<2) // wrapped; stops at a sent page
        #expect(pages.claimUnsent(1, from: 0, maxPages: 3) == 4..<5)
        #expect(pages.claimUnsent(1, from: 0, maxPages: 3) == nil)
        #expect((0..<10).allSatisfy { pages.isSent(1, $0) })
    }

    @Test("stale pages: sent once, written since, not sent again; a page sent again is not stale")
    func staleRuns() {
        var pages = SentPages(pageCounts: [7: 64])
        pages.markSent(7, 0..<4) // before tracking starts: still counts as ever sent
        pages.trackEverSent(7)
        #expect(pages.claimUnsent(7, from: 4, maxPages: 16) == 4..<20)
        #expect(pages.claimUnsent(7, from: 20, maxPages: 16) == 20..<36)
        // Written after being sent (50..<60 never was: not stale, just unsent).
        pages.markUnsent(7, [1..<3, 10..<12, 50..<60])
        #expect(!pages.isSent(7, 1) && !pages.isSent(7, 10))
        pages.markSent(7, 11..<12) // an answer sent page 11's latest content
        let stale = pages.staleRuns(7)
        #expect(stale == [1..<3, 10..<11])
        // Every stale page is ever-sent and not sent now.
        for run in stale { for p in run { #expect(!pages.isSent(7, p)) } }
    }

    @Test("never-sent pages are not stale; a region without ever-sent tracking has none")
    func neverSentNotStale() {
        var pages = SentPages(pageCounts: [1: 32, 2: 32])
        pages.trackEverSent(1)
        pages.markSent(1, 0..<8)
        pages.markUnsent(1, [4..<20])
        #expect(pages.staleRuns(1) == [4..<8])
        pages.markSent(2, 0..<32)
        pages.markUnsent(2, [0..<32])
        #expect(pages.staleRuns(2) == [])
        pages.markUnsent(3, [0..<1]) // a region never sent: nothing happens
        #expect(pages.staleRuns(3) == [])
    }

    @Test("markAllSent: nothing left to claim, nothing stale")
    func allSent() {
        var pages = SentPages(pageCounts: [1: 100])
        pages.trackEverSent(1)
        pages.markAllSent(1)
        #expect(pages.claimUnsent(1, from: 0, maxPages: 8) == nil)
        #expect(pages.staleRuns(1) == [])
    }

    @Test("staleRuns matches a page-by-page reference on random histories")
    func staleMatchesReference() {
        var rng = Rng(state: 42)
        for _ in 0..<50 {
            let count = Int(rng.next() % 300) + 1
            var pages = SentPages(pageCounts: [1: count])
            var sent = Set<Int>(), ever = Set<Int>()
            pages.trackEverSent(1)
            for _ in 0..<20 {
                let a = Int(rng.next() % UInt64(count)), b = min(count, a + Int(rng.next() % 40) + 1)
                switch rng.next() % 3 {
                case 0:
                    pages.markSent(1, a..<b); sent.formUnion(a..<b); ever.formUnion(a..<b)
                case 1:
                    pages.markUnsent(1, [a..<b]); sent.subtract(a..<b)
                default:
                    if let run = pages.claimUnsent(1, from: a, maxPages: b - a) {
                        #expect(run.allSatisfy { !sent.contains($0) })
                        sent.formUnion(run); ever.formUnion(run)
                    }
                }
            }
            let expected = ever.subtracting(sent)
            let stale = pages.staleRuns(1)
            #expect(Set(stale.flatMap { $0 }) == expected)
            // Maximal, sorted, disjoint runs.
            #expect(zip(stale, stale.dropFirst()).allSatisfy { $0.upperBound < $1.lowerBound })
        }
    }
}


@Suite("Confirmed pages of a live region (a resume during pre-copy)")
struct ConfirmedPagesTests {
    @Test("a page is confirmed once a checkpoint after its send is answered, and only while it is not written again")
    func confirmation() {
        var pages = SentPages(pageCounts: [1: 16])
        pages.trackEverSent(1)
        #expect(pages.claimUnsent(1, from: 0, maxPages: 4) == 0..<4)
        let first = pages.checkpoint(token: 10), empty = pages.checkpoint(token: 11)
        #expect(first)
        #expect(!empty, "nothing sent since: no checkpoint")
        #expect(pages.claimUnsent(1, from: 4, maxPages: 4) == 4..<8)
        let second = pages.checkpoint(token: 12)
        #expect(second)
        #expect(!(0..<8).contains { pages.isConfirmed(1, $0) }, "no PONG yet")
        pages.markUnsent(1, [2..<3]) // written after it was sent, before the PONG
        pages.confirm(upTo: 10)
        #expect((0..<4).map { pages.isConfirmed(1, $0) } == [true, true, false, true])
        #expect(!pages.isConfirmed(1, 4), "the second checkpoint is not answered")
        pages.confirm(upTo: 12)
        #expect((4..<8).allSatisfy { pages.isConfirmed(1, $0) })
        pages.markUnsent(1, [5..<6])
        #expect(!pages.isConfirmed(1, 5), "written again: no longer current at the destination")
    }

    @Test("a staged RECEIVED trusts only confirmed pages: a held page whose latest copy went unanswered is sent again, and stays stale until then")
    func stagedReset() {
        var pages = SentPages(pageCounts: [1: 16])
        pages.trackEverSent(1)
        _ = pages.claimUnsent(1, from: 0, maxPages: 8) // round 0: pages 0..<8
        pages.checkpoint(token: 1)
        pages.confirm(upTo: 1)
        pages.markUnsent(1, [3..<4]) // page 3 written
        _ = pages.claimUnsent(1, from: 0, maxPages: 1) // round 1 sends page 3 again: lost in flight
        #expect(pages.isSent(1, 3) && !pages.isConfirmed(1, 3))
        // The destination holds 0..<8 (page 3 as its round-0 copy).
        let lost = pages.reset(1, held: [0..<8], staged: true)
        #expect(lost == 1, "page 3 counted as sent, no longer")
        #expect(!pages.isSent(1, 3))
        #expect(pages.staleRuns(1) == [3..<4], "held stale: invalidated at the switch unless sent again")
        #expect(pages.claimUnsent(1, from: 0, maxPages: 16) == 3..<4)
        // The same map without `staged` (the destination saw SWITCHED) is taken as it is.
        var after = SentPages(pageCounts: [1: 16])
        after.trackEverSent(1)
        _ = after.claimUnsent(1, from: 0, maxPages: 8)
        let none = after.reset(1, held: [0..<8])
        #expect(none == 0)
        #expect((0..<8).allSatisfy { after.isSent(1, $0) })
    }

    @Test("checkpoints sent on a lost connection confirm nothing after a reset")
    func checkpointsDropped() {
        var pages = SentPages(pageCounts: [1: 8])
        pages.trackEverSent(1)
        _ = pages.claimUnsent(1, from: 0, maxPages: 4)
        pages.checkpoint(token: 5)
        pages.reset(1, held: [], staged: true)
        pages.confirm(upTo: 5) // a late PONG from the old connection
        #expect(!(0..<4).contains { pages.isConfirmed(1, $0) })
    }
}
