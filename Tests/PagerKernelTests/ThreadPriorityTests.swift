import PagerKernel
import Synchronization
import Testing

@Suite("Thread priorities and waiting on state", .serialized)
struct ThreadPriorityTests {
    /// Runs `body` on a new KernelThread and returns what it returned.
    private func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        let result = Mutex<Result<T, any Error>?>(nil)
        let thread = try KernelThread(name: "test-prio") { result.withLock { $0 = Result { try body() } } }
        thread.join()
        return try result.withLock { $0! }.get()
    }

    @Test("nested foreground sections on a background thread: only the outermost one goes back to SCHED_IDLE",
          .enabled(if: isRoot, "leaving SCHED_IDLE needs CAP_SYS_NICE"))
    func nestedForegroundSections() throws {
        let lock = ForegroundMutex(0)
        let seen = try onThread { () throws -> [SchedulingPolicy] in
            try makeCurrentThreadBackground()
            var seen = [try currentThreadSchedulingPolicy()]
            try withForegroundPriority { () throws -> Void in
                seen.append(try currentThreadSchedulingPolicy())
                try lock.withLock { _ in seen.append(try currentThreadSchedulingPolicy()) }
                // The inner section (the lock) has left; the outer one is still running.
                seen.append(try currentThreadSchedulingPolicy())
            }
            seen.append(try currentThreadSchedulingPolicy())
            return seen
        }
        #expect(seen == [.idle, .other, .other, .other, .idle], "policies: before, outer, inner, after inner, after outer")
    }

    @Test("a normal thread stays SCHED_OTHER through foreground sections (no policy change)")
    func normalThreadUntouched() throws {
        let lock = ForegroundMutex(0)
        let seen = try onThread { () throws -> [SchedulingPolicy] in
            var seen: [SchedulingPolicy] = []
            try withForegroundPriority { () throws -> Void in
                try lock.withLock { _ in seen.append(try currentThreadSchedulingPolicy()) }
                seen.append(try currentThreadSchedulingPolicy())
            }
            seen.append(try currentThreadSchedulingPolicy())
            return seen
        }
        #expect(seen == [.other, .other, .other])
    }

    @Test("WaitableState: a change wakes a waiter blocked without a deadline")
    func changeWakesWaiter() throws {
        let state = WaitableState(0)
        let waiting = Atomic<Bool>(false)
        let waiter = try KernelThread(name: "test-wait") {
            waiting.store(true, ordering: .releasing)
            _ = state.wait(until: { $0 == 3 })
        }
        // The waiter may or may not be asleep yet when the changes come: either way it must
        // return, which the join shows (it has no deadline to fall back on).
        while !waiting.load(ordering: .acquiring) {}
        for _ in 0..<3 { state.change { $0 += 1 } }
        waiter.join()
        #expect(state.withLock { $0 } == 3)
    }

    @Test("WaitableState: a wait whose condition never holds ends at its deadline, false")
    func waitTimesOut() {
        let state = WaitableState(false)
        let start = monotonicNanoseconds()
        #expect(!state.wait(until: { $0 }, deadline: start + 20_000_000))
        #expect(monotonicNanoseconds() - start >= 20_000_000)
        #expect(state.wait(until: { !$0 }, deadline: start))
    }
}
