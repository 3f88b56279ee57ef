import PagerKernel

/// What one RDMA READ fetches: `length` bytes at `offset` in region `region` of the source.
public struct ReadTarget: Sendable, Hashable, CustomStringConvertible {
    public let region: UInt32
    /// Byte offset within the region (page aligned).
    public let offset: UInt64
    /// Bytes (whole pages).
    public let length: Int

    public init(region: UInt32, offset: UInt64, length: Int) {
        self.region = region
        self.offset = offset
        self.length = length
    }

    public var description: String { "region \(region) [\(hex(offset)), +\(length))" }
}

/// A work request's `wr_id`: the run's generation in the high 32 bits, its pool in bits 24-31
/// and its first slot in bits 0-23. The generation changes every time a run is handed out, so a
/// completion that arrives for an earlier use of the same slots (after a queue was torn down and
/// the slots reused) can never be taken for the current one.
public struct WorkRequestID: Sendable, Hashable, CustomStringConvertible {
    public let raw: UInt64

    public init(raw: UInt64) { self.raw = raw }
    init(pool: UInt8, slot: Int, generation: UInt32) {
        raw = UInt64(generation) << 32 | UInt64(pool) << 24 | UInt64(UInt32(slot) & 0xFF_FFFF)
    }

    public var pool: UInt8 { UInt8(truncatingIfNeeded: raw >> 24) }
    var slot: Int { Int(UInt32(truncatingIfNeeded: raw) & 0xFF_FFFF) }
    var generation: UInt32 { UInt32(truncatingIfNeeded: raw >> 32) }
    public var description: String { "wr \(pool):\(slot)/\(generation)" }
}

/// How a work request completed (`ibv_wc.status`, reduced to what the pager acts on).
public enum CompletionStatus: Sendable, Equatable, CustomStringConvertible {
    /// `IBV_WC_SUCCESS`: the bytes are in the slots.
    case success
    /// `IBV_WC_WR_FLUSH_ERR`: the queue pair went to the error state before this request ran.
    case flushed
    /// Any other status: the request failed (and the queue pair with it).
    case failed(status: UInt32, detail: String)

    public var description: String {
        switch self {
        case .success: "success"
        case .flushed: "flushed (the queue pair is in the error state)"
        case .failed(let status, let detail): "failed with status \(status) (\(detail))"
        }
    }
}

/// What a completion means for the pages.
public enum ReadOutcome: Sendable, Equatable {
    /// The target's bytes are in `slots`: install them, then `release` the slots.
    case arrived(ReadTarget, slots: Range<Int>)
    /// The READ did not deliver: the target's pages are missing again (fetch them another way);
    /// the slots are already released.
    case failed(ReadTarget, CompletionStatus)
    /// A completion for no request in flight (an earlier generation, or an id never issued):
    /// nothing is installed from it.
    case stale(WorkRequestID)
}

/// The READs in flight and the staging slots they land in. Pure and single-threaded: the
/// fault loop that posts and polls owns it.
///
/// The one rule it enforces: a slot's bytes are handed out for installing only from a
/// successful completion of the request that slot was given to.
public struct ReadTracker: Sendable {
    private struct InFlight: Sendable {
        let target: ReadTarget
        let slots: Range<Int>
        let generation: UInt32
    }

    private var slots: SlotAllocator
    /// By first slot.
    private var inFlight: [Int: InFlight] = [:]
    private var nextGeneration: UInt32 = 1
    /// Which pool's slots these are (in every id handed out).
    public let pool: UInt8

    /// `count` slots (at most 2^24), named `pool` in work request ids.
    public init(slots count: Int, pool: UInt8 = 0) {
        precondition(count <= 1 << 24, "\(count) slots do not fit a work request id's 24 bits")
        slots = SlotAllocator(count: count)
        self.pool = pool
    }

    /// READs posted and not completed.
    public var pending: Int { inFlight.count }
    /// Slots taken by READs in flight or by arrived runs not yet released.
    public var slotsInUse: Int { slots.inUse }
    public var slotCount: Int { slots.count }

    /// Gives `target` a run of `slotCount` slots and the work request id to post it with; nil
    /// when the pool has no such run free (fetch it another way or wait for completions).
    public mutating func begin(_ target: ReadTarget, slotCount: Int) -> (WorkRequestID, Range<Int>)? {
        guard let run = slots.allocate(slotCount) else { return nil }
        let generation = nextGeneration
        nextGeneration = nextGeneration == .max ? 1 : nextGeneration + 1
        inFlight[run.lowerBound] = InFlight(target: target, slots: run, generation: generation)
        return (WorkRequestID(pool: pool, slot: run.lowerBound, generation: generation), run)
    }

    /// A completion: the bytes of a successful one are handed out, anything else puts the
    /// target back to missing.
    public mutating func complete(_ id: WorkRequestID, _ status: CompletionStatus) -> ReadOutcome {
        guard id.pool == pool, let entry = inFlight[id.slot], entry.generation == id.generation else { return .stale(id) }
        inFlight[id.slot] = nil
        if status == .success { return .arrived(entry.target, slots: entry.slots) }
        slots.free(entry.slots)
        return .failed(entry.target, status)
    }

    /// A request that was never posted (`ibv_post_send` refused it): its slots go back at once.
    public mutating func cancel(_ id: WorkRequestID) -> ReadTarget? {
        guard id.pool == pool, let entry = inFlight[id.slot], entry.generation == id.generation else { return nil }
        inFlight[id.slot] = nil
        slots.free(entry.slots)
        return entry.target
    }

    /// After installing an arrived run.
    public mutating func release(_ run: Range<Int>) { slots.free(run) }

    /// The queue pair is gone (destroyed, disconnected, device removed): every READ in flight
    /// is put back to missing and its slots freed; completions that still come for them are
    /// `stale`. Returns the targets in the order of their slots.
    public mutating func abandonAll() -> [ReadTarget] {
        let entries = inFlight.values.sorted { $0.slots.lowerBound < $1.slots.lowerBound }
        inFlight.removeAll()
        for entry in entries { slots.free(entry.slots) }
        return entries.map(\.target)
    }
}


