import PagerCore
import PagerKernel
import Synchronization

/// A region still being written, migrated with pre-copy rounds before the switch to
/// post-copy: round 0 sends every page, each next round the pages written during the last
/// (found by ``WriteTracker``), until ``policy`` says switch (or ``forceSwitch()``). Then
/// ``pause`` stops the writer, a last scan finds the final dirty set, the destination is told
/// which of its pages are stale (INVALIDATE), and SWITCHED starts an ordinary post-copy.
public final class LiveRegion: @unchecked Sendable {
    public let tracker: WriteTracker
    public var policy: ConvergencePolicy
    /// Stops the writer (a process: SIGSTOP; the library: the caller's callback). It must
    /// return only once no more writes can happen.
    public let pause: @Sendable () throws -> Void
    /// Lets a paused writer run again (a process: SIGCONT), for a session that ended before
    /// SWITCHED went out: the workload never moved. Nil where that cannot be done from here.
    public let resume: (@Sendable () throws -> Void)?
    /// Bytes of page data sent in pre-copy rounds so far, across sessions (for the metrics:
    /// counted as they go, so the counter never goes down).
    public let precopyBytesSent = Atomic<UInt64>(0)
    private let forced = Atomic<Bool>(false)
    private let claimed = Atomic<Bool>(false)
    private let state = Mutex(Outcome())

    /// What pre-copy did, for the report.
    public struct Outcome: Sendable {
        public var rounds: [PrecopyRound] = []
        public var reason: ConvergencePolicy.Reason?
        /// Pages written after the last round's scan, found by the scan after the pause.
        public var finalDirtyPages = 0
        /// Pages the destination was told are stale (INVALIDATE).
        public var invalidatedPages = 0
        /// From the pause until SWITCHED was sent (every INVALIDATE acknowledged).
        public var pauseNanoseconds: UInt64 = 0
        public var switched = false
    }

    public init(tracker: WriteTracker, policy: ConvergencePolicy = ConvergencePolicy(), pause: @escaping @Sendable () throws -> Void,
                resume: (@Sendable () throws -> Void)? = nil) {
        self.tracker = tracker
        self.policy = policy
        self.pause = pause
        self.resume = resume
    }

    /// Lets the paused writer run again; false if this region cannot (no ``resume``).
    func unpause() throws -> Bool {
        guard let resume else { return false }
        try resume()
        return true
    }

    /// Switch to post-copy at the end of the current round, whatever the policy says.
    public func forceSwitch() { forced.store(true, ordering: .releasing) }
    var isForced: Bool { forced.load(ordering: .acquiring) }

    /// Marks the region as migrating; true if it already was (one destination at a time).
    func claim() -> Bool { claimed.exchange(true, ordering: .acquiringAndReleasing) }

    public var outcome: Outcome { state.withLock { $0 } }
    func record(_ body: (inout Outcome) -> Void) { state.withLock { body(&$0) } }
}
