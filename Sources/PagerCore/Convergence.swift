/// What one pre-copy round did, as the source measured it.
public struct PrecopyRound: Sendable, Equatable {
    /// 0 sends every page; round n sends the pages written during round n - 1.
    public var index: Int
    public var pagesSent: Int
    public var bytesSent: UInt64
    /// Pages found written by the scan that ended this round (to send in the next one).
    public var dirtyPages: Int
    public var dirtyBytes: UInt64
    public var scanNanoseconds: UInt64
    /// From the round's first send to the end of its scan.
    public var nanoseconds: UInt64

    public init(index: Int, pagesSent: Int, bytesSent: UInt64, dirtyPages: Int, dirtyBytes: UInt64,
                scanNanoseconds: UInt64, nanoseconds: UInt64) {
        self.index = index
        self.pagesSent = pagesSent
        self.bytesSent = bytesSent
        self.dirtyPages = dirtyPages
        self.dirtyBytes = dirtyBytes
        self.scanNanoseconds = scanNanoseconds
        self.nanoseconds = nanoseconds
    }

    /// Bytes per second the round sent.
    public var rate: Double { nanoseconds == 0 ? 0 : Double(bytesSent) * 1e9 / Double(nanoseconds) }
}

/// Decides, after each pre-copy round, whether to run another or switch to post-copy.
///
/// Switch when the pages still dirty would take at most `downtimeBudget` to send at the rate
/// the last round achieved (they are then fetched post-copy, so this bounds how much the
/// destination starts without), when the dirty set has stopped shrinking for `stallRounds`
/// rounds (a hot set that never converges), at `maxRounds`, at the deadline, or when forced.
public struct ConvergencePolicy: Sendable, Equatable {
    public var downtimeBudgetNanoseconds: UInt64 = 100_000_000
    /// Rounds after round 0.
    public var maxRounds = 30
    /// Rounds in a row whose dirty set is not at least `shrinkFactor` of the smallest so far.
    public var stallRounds = 3
    public var shrinkFactor = 0.9
    /// Nanoseconds since pre-copy began after which the next round end switches (nil: none).
    public var deadlineNanoseconds: UInt64?
    /// False: no rounds at all, the writer is paused before anything is sent (a pure
    /// post-copy of live memory, the baseline pre-copy is compared with).
    public var precopy = true

    public init() {}

    public enum Reason: Sendable, Equatable, CustomStringConvertible {
        case converged(dirtyBytes: UInt64, budgetBytes: UInt64)
        case notShrinking(rounds: Int)
        case roundLimit(Int)
        case deadline
        case forced
        case noPrecopy

        public var description: String {
            switch self {
            case .converged(let d, let b): "converged: \(d >> 10) KiB dirty fits the downtime budget (\(b >> 10) KiB at the measured rate)"
            case .notShrinking(let n): "the dirty set stopped shrinking for \(n) rounds"
            case .roundLimit(let n): "round limit (\(n)) reached"
            case .deadline: "pre-copy deadline reached"
            case .forced: "switch forced by the operator"
            case .noPrecopy: "pre-copy disabled: pure post-copy"
            }
        }
    }

    public enum Decision: Sendable, Equatable {
        case anotherRound
        case switchToPostcopy(Reason)
    }

    /// The decision after `rounds` (all rounds so far, oldest first; the last just ended),
    /// `elapsed` nanoseconds after pre-copy began.
    public func decide(after rounds: [PrecopyRound], elapsed: UInt64, forced: Bool) -> Decision {
        guard let last = rounds.last else { return .anotherRound }
        if forced { return .switchToPostcopy(.forced) }
        let budget = UInt64(last.rate * Double(downtimeBudgetNanoseconds) / 1e9)
        if last.dirtyBytes <= budget { return .switchToPostcopy(.converged(dirtyBytes: last.dirtyBytes, budgetBytes: budget)) }
        if last.index >= maxRounds { return .switchToPostcopy(.roundLimit(maxRounds)) }
        if let deadline = deadlineNanoseconds, elapsed >= deadline { return .switchToPostcopy(.deadline) }
        // Count the trailing rounds that failed to beat the best so far by the shrink factor.
        var best = Int.max, stalled = 0
        for r in rounds {
            if Double(r.dirtyPages) < Double(best) * shrinkFactor || best == Int.max {
                best = min(best, r.dirtyPages)
                stalled = 0
            } else {
                stalled += 1
            }
        }
        if stalled >= stallRounds { return .switchToPostcopy(.notShrinking(rounds: stalled)) }
        return .anotherRound
    }
}
