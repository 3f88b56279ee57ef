import Glibc
import Logging
import PagerCore
import PagerDestination
import PagerHarness
import PagerKernel
import PagerSource
import PagerTrust
import PagerWire
import Synchronization
import Testing

@Suite("The source's switch to post-copy", .serialized, .enabled(if: getuid() == 0, "needs root: userfaultfd write tracking, leaving SCHED_IDLE"))
struct SwitchPriorityTests {
    @Test("the switch's pause, scan and INVALIDATE run at normal priority on a background push thread",
          arguments: [true, false])
    func switchRunsInForeground(precopy: Bool) throws {
        let pages = 1024 // 4 MiB
        let served = try MemoryMapping.anonymous(length: pages * basePageSize)
        for p in 0..<pages { served.page(p).storeBytes(of: UInt64(p) + 1, as: UInt64.self) }
        let records = RecordedLog()
        let logger = records.logger
        var policy = ConvergencePolicy()
        policy.precopy = precopy
        policy.downtimeBudgetNanoseconds = 0
        policy.maxRounds = 1
        let tracker = try WriteTracker(ownRange: served.range)
        let atPause = Mutex<[SchedulingPolicy]>([])
        let servedBase = UInt(bitPattern: served.base)
        let live = LiveRegion(tracker: tracker, policy: policy) {
            atPause.withLock { $0.append((try? currentThreadSchedulingPolicy()) ?? .unknown(-1)) }
            // The writer's last writes: the final scan finds them, and (with pre-copy, which
            // sent them in round 0) the destination is told they are stale: INVALIDATE.
            let memory = UnsafeMutableRawPointer(bitPattern: servedBase)!
            for p in [3, 700] { memory.storeBytes(of: 0xFEED, toByteOffset: p * basePageSize + 8, as: UInt64.self) }
        }
        let region = ServedRegion(id: 1, name: "live-ram", base: served.base, length: pages * basePageSize, live: live)
        let server = try SourceServer(listen: Endpoint(host: "127.0.0.1", port: 0), regions: [region], authentication: TestKeys.authentication, logger: logger)
        server.backgroundPush = true
        let serverThread = try KernelThread(name: "test-server") { server.run() }
        defer { server.stop(); serverThread.join() }

        let client = try DestinationClient(source: server.listener.endpoint, clientName: "test", features: [.resume, .invalidation], authentication: TestKeys.authentication)
        let descriptor = try client.region(selectedBy: nil)
        // Returns once SWITCHED arrived: the switch is over.
        var connections = SessionConnections(demand: client.demand, push: client.push)
        _ = try StagedPages.receive(region: descriptor, connections: &connections, resumption: nil, logger: logger)
        client.close()

        let outcome = live.outcome
        #expect(outcome.switched)
        if precopy { #expect(outcome.invalidatedPages >= 2, "\(outcome)") }
        #expect(atPause.withLock { $0 } == [.other], "the writer was paused at this priority")
        // Logged by the push thread outside any foreground section: it is a background thread,
        // so normal priority below comes from the switch's foreground section.
        let begin = try #require(records.first(containing: precopy ? "pre-copy of live region" : "switching region"))
        #expect(begin.policy == .idle, "the push thread is a background thread: \(begin.message)")
        // Logged by the push thread after it sent SWITCHED, still in the switch's section.
        let switched = try #require(records.first(containing: "switched to post-copy after"))
        #expect(switched.policy == .other, "SWITCHED was sent at this priority (after the INVALIDATE round trip)")
    }
}
