import PagerCore
import PagerDestination
import PagerHandoff
import PagerKernel
import PagerOperationsCore
import Synchronization

/// A destination daemon's migrations for the status query and the metrics: those running
/// (their live ``MigrationProgress``), the last finished ones, and the totals of all, per
/// region name (counters never go down, whatever is dropped from the list).
public final class DestinationBook: Sendable {
    public struct Entry: Sendable {
        public let id: Int
        public let progress: MigrationProgress
        public var region = ""
        public var session: UInt64 = 0
        public var error: String?
    }

    /// The counts of finished migrations no longer listed, per region.
    struct Retired {
        var completed = 0, failed = 0
        var faults = 0, demand = 0, prefetch = 0, installed = 0, zero = 0, duplicates = 0, poisoned = 0
        var outages = 0, resumes = 0
        var bytes: UInt64 = 0
        var latency = [UInt64](repeating: 0, count: LatencyHistogram.bucketCount)
        var latencySum = 0.0
    }

    struct State {
        var next = 1
        var entries: [Entry] = []
        var retired: [String: Retired] = [:]
    }

    /// Finished migrations kept in the list.
    public static let keptFinished = 16
    public let role: String
    public let source: String
    let started = monotonicNanoseconds()
    private let state = Mutex(State())

    public init(role: String, source: String) {
        self.role = role
        self.source = source
    }

    /// A migration begins (a handoff was taken): its progress, to give the resolver.
    public func begin() -> (id: Int, progress: MigrationProgress) {
        let progress = MigrationProgress()
        let id = state.withLock { s -> Int in
            let id = s.next
            s.next += 1
            s.entries.append(Entry(id: id, progress: progress))
            return id
        }
        return (id, progress)
    }

    /// The session and region the migration got.
    public func identify(_ id: Int, session: UInt64, region: String) {
        state.withLock { s in
            guard let i = s.entries.firstIndex(where: { $0.id == id }) else { return }
            s.entries[i].session = session
            s.entries[i].region = region
        }
    }

    /// The migration ended (`error` nil: completed); its progress says so from now on.
    /// Returns its entry as it ended (before older finished ones may be dropped from the list).
    @discardableResult
    public func finish(_ id: Int, error: String?) -> Entry? {
        state.withLock { s -> Entry? in
            guard let i = s.entries.firstIndex(where: { $0.id == id }) else { return nil }
            s.entries[i].error = error
            s.entries[i].progress.enter(error == nil ? .completed : .failed)
            let ended = s.entries[i]
            let finished = s.entries.indices.filter { s.entries[$0].progress.phase.isFinished }
            for j in finished.dropLast(DestinationBook.keptFinished).reversed() {
                let e = s.entries.remove(at: j)
                s.retired[e.region, default: Retired()].add(e.progress)
            }
            return ended
        }
    }

    var snapshot: (entries: [Entry], retired: [String: Retired]) { state.withLock { ($0.entries, $0.retired) } }
}

extension MigrationProgress.Phase {
    var isFinished: Bool { self == .completed || self == .failed }
}

extension DestinationBook.Retired {
    mutating func add(_ p: MigrationProgress) {
        switch p.phase {
        case .completed: completed += 1
        case .failed: failed += 1
        default: break
        }
        faults += p.faults.load(ordering: .relaxed)
        demand += p.demandRequests.load(ordering: .relaxed)
        prefetch += p.prefetchRequests.load(ordering: .relaxed)
        installed += p.installedPages.load(ordering: .relaxed)
        zero += p.zeroPages.load(ordering: .relaxed)
        duplicates += p.duplicatePages.load(ordering: .relaxed)
        poisoned += p.pagesPoisoned.load(ordering: .relaxed)
        outages += p.outages.load(ordering: .relaxed)
        resumes += p.resumes.load(ordering: .relaxed)
        bytes += p.bytesReceived.load(ordering: .relaxed)
        for (k, c) in p.faultLatency.counts.enumerated() { latency[k] += c }
        latencySum += p.faultLatency.sumSeconds
    }
}
