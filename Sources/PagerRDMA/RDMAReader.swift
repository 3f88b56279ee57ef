#if RDMA
import PagerKernel

/// Registered local memory that READs land in: `count` slots of `slotSize` bytes at `base`.
public struct StagingMemory: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let slotSize: Int
    public let count: Int
    /// The local key of the memory region covering it.
    public let lkey: UInt32

    public init(base: UnsafeMutableRawPointer, slotSize: Int, count: Int, lkey: UInt32) {
        self.base = base
        self.slotSize = slotSize
        self.count = count
        self.lkey = lkey
    }
}

/// What the fault loop learns from polling.
public enum ReadEvent {
    /// `target`'s bytes are at `bytes` (in the staging pool): install them, then `release(slots)`.
    case arrived(ReadTarget, pool: Int, slots: Range<Int>, bytes: UnsafeRawBufferPointer)
    /// The READ failed: the pages are missing again. The first failure also ends the queue.
    case failed(ReadTarget, CompletionStatus)
}

/// One-sided READs of the source's memory into staging pools: the destination's RDMA data path.
/// Used by one thread at a time: its owner serialises every call (one thread, or a lock).
///
/// A READ that cannot be posted (no grant for the region, no free slots, the queue has failed)
/// is returned to the caller, which fetches those pages over TCP. The first failed completion
/// ends the queue (a reliable-connected queue pair in error flushes everything after it); the
/// owner then `abandon`s what is still in flight and fetches it over TCP, or poisons it when
/// the session is gone. Nothing is ever installed but from a successful completion of the READ
/// its slots were given to.
public final class RDMAReader: @unchecked Sendable {
    public enum State: Equatable {
        case live
        /// The reason, for the log: the first failed completion or post.
        case failed(String)
    }

    public let queue: VerbsQueue
    public var keys: RemoteKeys
    public private(set) var state: State = .live
    private let pools: [StagingMemory]
    private let maximumPending: Int
    private var trackers: [ReadTracker]
    /// Counts, for the summary.
    public private(set) var readsCompleted = 0
    public private(set) var bytesRead = 0

    /// `pools` in increasing order of slot size (e.g. 4 KiB slots, then 2 MiB slots): a READ goes
    /// to the pool with the largest slots not larger than it (a run of adjacent slots there), so
    /// a 64 KiB block takes sixteen 4 KiB slots and a huge page one 2 MiB slot.
    /// At most `maximumPending` READs are in flight (the send queue's depth): more are returned
    /// as not posted.
    public init(queue: VerbsQueue, pools: [StagingMemory], keys: RemoteKeys = RemoteKeys(), maximumPending: Int = 128) {
        precondition(!pools.isEmpty && pools.count < 256 && maximumPending > 0)
        self.queue = queue
        self.maximumPending = maximumPending
        self.pools = pools
        self.keys = keys
        trackers = pools.indices.map { ReadTracker(slots: pools[$0].count, pool: UInt8($0)) }
    }

    /// READs posted and not completed.
    public var pending: Int { trackers.reduce(0) { $0 + $1.pending } }

    /// Posts READs for `targets` (one chain per call, at most `VerbsQueue.maximumChain`) and
    /// returns those not posted, to be fetched over TCP.
    public func read(_ targets: [ReadTarget]) -> [ReadTarget] {
        guard state == .live else { return targets }
        var work: [ReadWork] = []
        var runs: [(pool: Int, WorkRequestID)] = []
        var notPosted: [ReadTarget] = []
        let room = maximumPending - pending
        for target in targets {
            guard work.count < min(VerbsQueue.maximumChain, room), let remote = keys.remote(for: target) else {
                notPosted.append(target)
                continue
            }
            let p = poolIndex(for: target.length)
            let slotCount = (target.length + pools[p].slotSize - 1) / pools[p].slotSize
            guard slotCount <= pools[p].count, let (id, run) = trackers[p].begin(target, slotCount: slotCount) else {
                notPosted.append(target)
                continue
            }
            work.append(ReadWork(id: id, local: pools[p].base + run.lowerBound * pools[p].slotSize,
                                 lkey: pools[p].lkey, length: target.length, remote: remote))
            runs.append((p, id))
        }
        let (posted, error) = queue.post(work)
        if let error {
            for (p, id) in runs[posted...] {
                if let target = trackers[p].cancel(id) { notPosted.append(target) }
            }
            // A full send queue refuses for now only; anything else ends the queue.
            if error.errno != .noMemory { state = .failed("\(error)") }
        }
        return notPosted
    }

    /// Takes up to `maximum` completions and reports each; returns how many it took.
    public func poll(maximum: Int = 32, _ handle: (ReadEvent) -> Void) throws(KernelError) -> Int {
        var events: [ReadEvent] = []
        let count = try queue.poll(maximum: maximum) { id, status in
            let p = Int(id.pool)
            guard p < trackers.count else { return }
            switch trackers[p].complete(id, status) {
            case .arrived(let target, let slots):
                readsCompleted += 1
                bytesRead += target.length
                let bytes = UnsafeRawBufferPointer(start: pools[p].base + slots.lowerBound * pools[p].slotSize, count: target.length)
                events.append(.arrived(target, pool: p, slots: slots, bytes: bytes))
            case .failed(let target, let status):
                if state == .live { state = .failed("READ of \(target) \(status)") }
                events.append(.failed(target, status))
            case .stale:
                break
            }
        }
        for event in events { handle(event) }
        return count
    }

    /// After installing an arrived READ's bytes.
    public func release(pool: Int, slots: Range<Int>) { trackers[pool].release(slots) }

    /// The queue pair is gone or in error: every READ in flight is missing again (returned, to be
    /// fetched over TCP or poisoned); completions still coming for them are ignored.
    public func abandon(reason: String) -> [ReadTarget] {
        if state == .live { state = .failed(reason) }
        return trackers.indices.flatMap { trackers[$0].abandonAll() }
    }

    private func poolIndex(for length: Int) -> Int {
        pools.lastIndex { $0.slotSize <= length } ?? 0
    }
}
#endif

#if RDMA
extension RDMAReader {
    /// Polls until at least one completion came or `deadline` passed: first a spin of polls for
    /// `spinNanoseconds` (a READ on hardware completes in microseconds, sooner than a wake-up),
    /// then the completion channel (`ibv_req_notify_cq`, one more poll for a completion that
    /// raced the arming, then a wait on `connection.completionDescriptor`). Returns how many.
    public func waitForCompletions(on connection: RDMAConnection, spinNanoseconds: UInt64 = 50_000, until deadline: Deadline,
                                   _ handle: (ReadEvent) -> Void) throws(KernelError) -> Int {
        let spinEnd = monotonicNanoseconds() + spinNanoseconds
        repeat {
            let n = try poll(handle)
            if n > 0 { return n }
        } while monotonicNanoseconds() < spinEnd
        while true {
            try queue.requestNotification()
            let n = try poll(handle)
            if n > 0 { return n }
            guard try pollReadable(connection.completionDescriptor, until: deadline, detail: "RDMA completions") else { return 0 }
            try connection.acknowledgeCompletionEvent()
            let m = try poll(handle)
            if m > 0 { return m }
        }
    }
}
#endif
