import PagerCore
import Testing

@Suite("Pre-copy convergence policy")
struct ConvergenceTests {
    /// A round that sent `sent` MiB in `ms` milliseconds and left `dirty` pages (4 KiB).
    func round(_ i: Int, sentMiB: Int = 100, ms: UInt64 = 100, dirty: Int) -> PrecopyRound {
        PrecopyRound(index: i, pagesSent: sentMiB << 8, bytesSent: UInt64(sentMiB) << 20, dirtyPages: dirty,
                     dirtyBytes: UInt64(dirty) * 4096, scanNanoseconds: 0, nanoseconds: ms * 1_000_000)
    }

    @Test("switches once the dirty set fits the downtime budget at the measured rate")
    func converges() {
        var policy = ConvergencePolicy()
        policy.downtimeBudgetNanoseconds = 10_000_000 // 10 ms at 1000 MiB/s = 10 MiB = 2560 pages
        #expect(policy.decide(after: [round(0, dirty: 5000)], elapsed: 0, forced: false) == .anotherRound)
        let d = policy.decide(after: [round(0, dirty: 5000), round(1, dirty: 2560)], elapsed: 0, forced: false)
        guard case .switchToPostcopy(.converged(let dirty, let budget)) = d else { Issue.record("\(d)"); return }
        #expect(dirty == 2560 * 4096 && budget >= dirty)
    }

    @Test("a hot set that never shrinks switches after stallRounds; a shrinking one goes on")
    func hotSet() {
        var policy = ConvergencePolicy()
        policy.downtimeBudgetNanoseconds = 0
        let hot = (0..<4).map { round($0, dirty: 1000 + $0) }
        #expect(policy.decide(after: Array(hot.prefix(3)), elapsed: 0, forced: false) == .anotherRound)
        #expect(policy.decide(after: hot, elapsed: 0, forced: false) == .switchToPostcopy(.notShrinking(rounds: 3)))
        let shrinking = (0..<6).map { round($0, dirty: 100_000 >> $0) }
        #expect(policy.decide(after: shrinking, elapsed: 0, forced: false) == .anotherRound)
    }

    @Test("round limit, deadline and the operator's force each switch")
    func limits() {
        var policy = ConvergencePolicy()
        policy.downtimeBudgetNanoseconds = 0
        policy.maxRounds = 2
        let rounds = [round(0, dirty: 9000), round(1, dirty: 4000), round(2, dirty: 1000)]
        #expect(policy.decide(after: rounds, elapsed: 0, forced: false) == .switchToPostcopy(.roundLimit(2)))
        #expect(policy.decide(after: Array(rounds.prefix(2)), elapsed: 0, forced: true) == .switchToPostcopy(.forced))
        policy.deadlineNanoseconds = 5
        #expect(policy.decide(after: Array(rounds.prefix(2)), elapsed: 5, forced: false) == .switchToPostcopy(.deadline))
        #expect(policy.decide(after: Array(rounds.prefix(2)), elapsed: 4, forced: false) == .anotherRound)
    }
}
