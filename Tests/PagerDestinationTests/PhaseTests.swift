@testable import PagerDestination
import PagerCore
import Testing

/// The resolver's lifecycle rules, without a kernel: which failure is reported, and that
/// connection errors after GOODBYE are not failures.
@Suite("Resolver phase")
struct PhaseTests {
    static func state() -> FaultResolver.State {
        FaultResolver.State(pages: RegionPages(pageCount: 8), planner: PrefetchPlanner(), faults: WaitingFaults(pageCount: 8),
                            link: FaultResolver.Link(demand: ScriptedConnection([]), push: nil), refetch: PageBitmap(count: 8))
    }

    @Test("the first failure wins; later ones do not replace it")
    func firstFailureWins() {
        var s = Self.state()
        #expect(s.failure == nil && !s.pushComplete)
        s.fail(.sourceShuttingDown)
        s.fail(.workloadGone)
        guard case .sourceShuttingDown? = s.failure else {
            Issue.record("expected the first failure, got \(String(describing: s.failure))")
            return
        }
    }

    @Test("once closing (GOODBYE sent), errors on the connections are the expected close")
    func closingIgnoresErrors() {
        var s = Self.state()
        s.phase = .closing
        s.fail(.sourceSilent(milliseconds: 1, timeoutMilliseconds: 1))
        #expect(s.failure == nil)
    }

    @Test("PUSH_COMPLETE is remembered while fetching, and staged pages are known by unit")
    func pushCompleteAndStaged() {
        var s = Self.state()
        s.phase = .fetching(pushComplete: true)
        #expect(s.pushComplete)
        var staged = PageBitmap(count: 8)
        staged.insert(2..<4)
        s.stagedUnits = staged
        #expect(s.isStaged(3) && !s.isStaged(4))
    }
}
