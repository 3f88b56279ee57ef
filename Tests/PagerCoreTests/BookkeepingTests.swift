import PagerCore
import Testing

/// The tests' deterministic generator.
typealias Rng = SplitMix64


@Suite("PageBitmap")
struct PageBitmapTests {
    @Test("every range operation on every small size agrees with a Bool array")
    func exhaustiveSmall() {
        for count in [0, 1, 63, 64, 65, 130] {
            for lo in 0...count {
                for hi in lo...count where (hi - lo) % 3 == 0 || hi == count {
                    var bitmap = PageBitmap(count: count)
                    var model = Array(repeating: false, count: count)
                    bitmap.insert(0..<count / 2)
                    for i in 0..<count / 2 { model[i] = true }
                    let added = bitmap.insert(lo..<hi)
                    #expect(added == model[lo..<hi].filter { !$0 }.count)
                    for i in lo..<hi { model[i] = true }
                    let removed = bitmap.remove((lo + hi) / 2..<hi)
                    #expect(removed == hi - (lo + hi) / 2)
                    for i in (lo + hi) / 2..<hi { model[i] = false }
                    #expect((0..<count).allSatisfy { bitmap.contains($0) == model[$0] })
                    #expect(bitmap.population == model.filter { $0 }.count)
                    for from in stride(from: 0, through: count, by: max(1, count / 7)) {
                        #expect(bitmap.first(true, from: from) == (from..<count).first { model[$0] })
                        #expect(bitmap.first(false, from: from) == (from..<count).first { !model[$0] })
                    }
                    let runs = bitmap.runs(in: 0..<count)
                    #expect(runs.flatMap { Array($0) } == (0..<count).filter { model[$0] })
                }
            }
        }
    }
}

/// A reference model of one page's state, written as plainly as possible.
enum ModelState: Equatable { case missing, inFlight, resident, discarded }

@Suite("RegionPages")
struct RegionPagesTests {
    @Test("random operation sequences agree with the plain model", arguments: 0..<16)
    func modelBased(seed: UInt64) {
        var rng = Rng(state: seed)
        let count = [1, 63, 64, 65, 300, 4096][Int(seed % 6)]
        var pages = RegionPages(pageCount: count)
        var model = Array(repeating: ModelState.missing, count: count)
        for _ in 0..<2000 {
            let a = Int.random(in: 0..<count, using: &rng)
            let r = a..<min(count, a + Int.random(in: 1...70, using: &rng))
            switch Int.random(in: 0..<7, using: &rng) {
            case 0:
                let runs = pages.request(r)
                let expected = r.filter { model[$0] == .missing }
                #expect(runs.flatMap { Array($0) } == expected, "request never asks twice")
                #expect(runs.allSatisfy { !$0.isEmpty })
                for i in expected { model[i] = .inFlight }
            case 1:
                let runs = pages.accept(r)
                let expected = r.filter { model[$0] == .missing || model[$0] == .inFlight }
                #expect(runs.flatMap { Array($0) } == expected, "replies are clipped to wanted pages")
                for i in expected { model[i] = .resident }
            case 2:
                pages.discard(r)
                for i in r { model[i] = .discarded }
            case 3:
                pages.invalidate(r)
                for i in r where model[i] != .discarded { model[i] = .missing }
            case 4:
                pages.markResident(r)
                for i in r { model[i] = .resident }
            case 5:
                pages.requestFailed(r)
                for i in r where model[i] == .inFlight { model[i] = .missing }
            default:
                let from = Int.random(in: 0..<count, using: &rng)
                let expected = (from..<count).first { model[$0] == .missing } ?? (0..<from).first { model[$0] == .missing }
                #expect(pages.nextMissing(from: from) == expected)
            }
            let mapped: [ModelState] = (0..<count).map {
                switch pages.state(of: $0) {
                case .missing: .missing
                case .inFlight: .inFlight
                case .resident: .resident
                case .discarded: .discarded
                }
            }
            if mapped != model {
                Issue.record("state diverged from the model")
                return
            }
            #expect(pages.outstandingCount == model.filter { $0 == .missing || $0 == .inFlight }.count)
            #expect(pages.outstandingRuns().flatMap { Array($0) } == (0..<count).filter { model[$0] == .missing || model[$0] == .inFlight })
        }
    }

    @Test("a resume: pages in flight go back to missing except staged ones; held runs are resident, discarded and staged pages")
    func resumeBookkeeping() {
        var pages = RegionPages(pageCount: 32)
        _ = pages.request(0..<12)
        _ = pages.accept(0..<4) // resident 0..<4, in flight 4..<12
        pages.discard(20..<22)
        var staged = PageBitmap(count: 32)
        staged.insert(8..<10)
        #expect(pages.heldRuns(staged: staged) == [0..<4, 8..<10, 20..<22])
        #expect(pages.requeueInFlight(keeping: staged) == 6, "4..<8 and 10..<12 are asked again")
        #expect((4..<8).allSatisfy { pages.state(of: $0) == .missing } && (10..<12).allSatisfy { pages.state(of: $0) == .missing })
        #expect(pages.state(of: 8) == .inFlight && pages.state(of: 9) == .inFlight, "staged pages stay in flight from local memory")
        #expect(pages.request(0..<12) == [4..<8, 10..<12])
        #expect(pages.requeueInFlight(keeping: nil) == 8 && pages.inFlightCount == 0)
        #expect(pages.heldRuns(staged: nil) == [0..<4, 20..<22])
    }

    @Test("a page written by the workload after install is never reinstalled by a late push")
    func lateDataIsDropped() {
        var pages = RegionPages(pageCount: 8)
        #expect(pages.request(0..<4) == [0..<4])
        #expect(pages.accept(2..<3) == [2..<3]) // demand reply for page 2 arrives first
        #expect(pages.accept(0..<8) == [0..<2, 3..<8]) // a push covering it must skip page 2
        #expect(pages.isComplete)
        #expect(pages.accept(0..<8).isEmpty)
    }

    @Test("discarded pages are never filled from the source, even by replies in flight")
    func discardedStayZero() {
        var pages = RegionPages(pageCount: 16)
        #expect(pages.request(0..<16) == [0..<16])
        pages.discard(4..<8) // MADV_DONTNEED by the workload while the request is in flight
        #expect(pages.accept(0..<16) == [0..<4, 8..<16])
        #expect(pages.state(of: 5) == .discarded)
        #expect(pages.request(4..<8).isEmpty)
        #expect(pages.isComplete)
    }
}

@Suite("PrefetchPlanner")
struct PrefetchPlannerTests {
    @Test("a forward scan grows the window to the maximum; a backward scan mirrors it")
    func directions() {
        var p = PrefetchPlanner(minWindow: 16, maxWindow: 1024)
        var last = 0..<0
        for page in 0..<10 { last = p.plan(faultAt: page, pageCount: 1 << 20).ahead }
        #expect(p.direction == .forward)
        #expect(last == 10..<1034)
        var q = PrefetchPlanner(minWindow: 16, maxWindow: 1024)
        for page in stride(from: 5000, to: 4990, by: -1) { last = q.plan(faultAt: page, pageCount: 1 << 20).ahead }
        #expect(q.direction == .backward)
        #expect(last == 4991 - 1024..<4991)
    }

    @Test("random faults keep the minimum aligned window and the faulting page urgent")
    func random() {
        var p = PrefetchPlanner(minWindow: 16, maxWindow: 1024)
        var rng = Rng(state: 3)
        for _ in 0..<1000 {
            let page = Int.random(in: 0..<100_000, using: &rng)
            let plan = p.plan(faultAt: page, pageCount: 100_000)
            #expect(plan.urgent == page..<page + 1)
            #expect(plan.ahead.count <= 1024 && plan.ahead.lowerBound >= 0 && plan.ahead.upperBound <= 100_000)
        }
        // After a jump, the window is back at the minimum, aligned.
        _ = p.plan(faultAt: 50_000, pageCount: 100_000)
        let plan = p.plan(faultAt: 7, pageCount: 100_000)
        #expect(plan.ahead == 0..<16)
    }

    @Test("a strided scan (every 4th page) counts as forward")
    func strided() {
        var p = PrefetchPlanner(minWindow: 16, maxWindow: 256)
        for page in stride(from: 0, to: 400, by: 4) { _ = p.plan(faultAt: page, pageCount: 10_000) }
        #expect(p.direction == .forward)
        #expect(p.window == 256)
    }
}
