import Logging
import PagerCore
import PagerKernel
import PagerTransport
import PagerWire

/// Pages of a live region received before the switch to post-copy, held in the destination
/// daemon's own memory: the workload must not run on them until SWITCHED says which are
/// current, and the daemon cannot drop pages from another process's memory once installed.
/// The ``FaultResolver`` installs them locally once the workload's memory is handed over.
public final class StagedPages: @unchecked Sendable {
    public let region: RegionDescriptor
    let memory: MemoryMapping
    /// 4 KiB pieces of the region held current in `memory`.
    private(set) var present: PageBitmap
    public private(set) var bytesReceived: UInt64 = 0
    public private(set) var invalidatedBytes: UInt64 = 0
    public private(set) var invalidations = 0
    /// Nanoseconds from the first frame to SWITCHED.
    public internal(set) var nanoseconds: UInt64 = 0
    /// The connections lost during pre-copy, each resumed (or the last one not).
    public internal(set) var outages: [Outage] = []

    init(region: RegionDescriptor) throws(KernelError) {
        self.region = region
        memory = try MemoryMapping.anonymous(length: Int(region.length))
        present = PageBitmap(count: Int(region.length) / basePageSize)
    }

    /// The largest live region staged: 64 TiB, half of x86-64's 47-bit user address space.
    static let maxRegionLength: UInt64 = 1 << 46

    public var stagedBytes: UInt64 { UInt64(present.population * basePageSize) }

    /// Whether every 4 KiB piece of `[offset, offset + length)` is staged.
    func holds(offset: Int, length: Int) -> Bool {
        let first = offset / basePageSize, end = (offset + length) / basePageSize
        guard let gap = present.first(false, from: first) else { return true }
        return gap >= end
    }

    func pointer(offset: Int) -> UnsafeRawPointer { UnsafeRawPointer(memory.base + offset) }

    /// Frees staged memory once its pages are installed (or found stale).
    func release(offset: Int, length: Int) {
        try? memory.advise(.dontNeed, offset: offset, length: length)
    }

    /// Makes the staging memory for live `region`, checked first.
    static func make(for region: RegionDescriptor) throws(ResolveError) -> StagedPages {
        guard region.flags.contains(.live) else {
            throw .invalidSetup("region \(region.id) is not live: the source runs no pre-copy for it")
        }
        // Staging memory is as large as the region: it must fit this address space.
        guard region.length <= StagedPages.maxRegionLength else {
            throw .invalidSetup("live region \(region.id) is \(hex(region.length)) bytes: more than can be staged here (\(hex(StagedPages.maxRegionLength)))")
        }
        do { return try StagedPages(region: region) } catch { throw .kernel(error) }
    }

    /// Receives the pre-copy rounds on one push connection until SWITCHED: data is copied
    /// into staging memory (a later round's copy of a page replaces the earlier one), ZERO
    /// ranges drop their staging pages, INVALIDATE drops pages and is acknowledged. Every
    /// frame is noted in `heard` (monotonic ns) for the silence watch.
    func receiveRounds(on push: any FrameConnection, started: UInt64, heard: LastFrame, logger: Logger) throws(ResolveError) {
        let staged = self
        while true {
            let incoming: Incoming
            do { incoming = try push.receive() } catch { throw .channel(error) }
            heard.note()
            switch incoming {
            case .pageData(let h, _) where h.region != region.id:
                break // a region this destination does not map
            case .pageData(let h, let data):
                guard fits(h.offset, h.length, within: region.length) else {
                    throw .sourceMisbehaved("pre-copy PAGE_DATA at \(hex(h.offset))+\(hex(h.length)) is outside region \(region.id)")
                }
                for run in h.runs {
                    let offset = Int(run.range.lowerBound), length = Int(run.range.upperBound - run.range.lowerBound)
                    if let at = run.dataOffset {
                        (staged.memory.base + offset).copyMemory(from: data.baseAddress! + at, byteCount: length)
                        staged.bytesReceived += UInt64(length)
                    } else {
                        staged.release(offset: offset, length: length) // reads as zeros from now on
                    }
                }
                let offset = Int(h.offset), length = Int(h.length)
                _ = staged.present.insert(offset / basePageSize..<(offset + length) / basePageSize)
            case .message(.invalidate(let inv)):
                // Dropped = no longer staged (never installed): acknowledge at once, since the
                // source's writer is paused until it hears back; free the memory afterwards.
                if inv.region == region.id, let bad = inv.ranges.first(where: { !fits($0.offset, $0.length, within: region.length) }) {
                    throw .sourceMisbehaved("INVALIDATE \(inv.sequence) of region \(region.id) at \(hex(bad.offset))+\(hex(bad.length)) is outside the region (\(hex(region.length)) bytes)")
                }
                let ranges = inv.region == region.id ? inv.ranges : []
                for r in ranges {
                    _ = staged.present.remove(Int(r.offset) / basePageSize..<Int(r.offset + r.length) / basePageSize)
                    staged.invalidatedBytes += r.length
                }
                if inv.region == region.id { staged.invalidations += 1 }
                do { try push.send(.invalidateAck(sequence: inv.sequence, region: inv.region)) } catch { throw .channel(error) }
                for r in ranges { staged.release(offset: Int(r.offset), length: Int(r.length)) }
            case .message(.switched(let r, _)) where r == region.id:
                staged.nanoseconds = monotonicNanoseconds() - started
                logger.info("region \(region.id) switched to post-copy: \(staged.stagedBytes >> 20) MiB staged, \(staged.invalidatedBytes >> 10) KiB invalidated in \(staged.invalidations) INVALIDATE(s)")
                return
            case .message(.ping(let token, let timestamp)):
                // The source pings before it pauses the writer: answering says every frame before
                // the PING was taken in.
                do { try push.send(.pong(token: token, timestamp: timestamp)) } catch { throw .channel(error) }
            case .message(.pushComplete), .message(.pong), .message(.switched):
                break
            case .message(.error(let e)):
                throw .sourceRefused("during pre-copy: \(e.code): \(e.message)")
            case .message(let other):
                throw .sourceMisbehaved("unexpected \(other.type) during pre-copy")
            }
        }
    }
}

/// Whether `[offset, offset + length)` lies within `[0, limit)`, without overflowing.
func fits(_ offset: UInt64, _ length: UInt64, within limit: UInt64) -> Bool {
    length <= limit && offset <= limit - length
}
