#if RDMA
import CRDMA
import PagerKernel
import SystemPackage

/// The error of the libibverbs or librdmacm call that just failed (they set errno).
func verbsError(_ operation: String, detail: String = "") -> KernelError {
    KernelError(operation, Errno(rawValue: pager_rdma_errno()), detail: detail)
}

/// A protection domain (`ibv_alloc_pd`): the memory registrations and queue pairs of one
/// session. A queue pair can reach only registrations of its own domain, so one per session
/// keeps every session's memory out of every other session's reach.
public final class ProtectionDomain: @unchecked Sendable {
    public let pd: UnsafeMutablePointer<ibv_pd>

    /// A new domain on the device `context` (`ibv_alloc_pd`).
    public init(context: UnsafeMutablePointer<ibv_context>) throws(KernelError) {
        guard let pd = ibv_alloc_pd(context) else { throw verbsError("ibv_alloc_pd") }
        self.pd = pd
    }

    deinit { ibv_dealloc_pd(pd) }

    /// What a registration allows.
    public enum Access: Sendable {
        /// The source's served memory: remote READ only, never remote write.
        case remoteRead
        /// The destination's staging pool: written by the device (READ responses land there).
        case localWrite
    }

    /// Registers `[base, base + length)` (`ibv_reg_mr`). When pinning fails (the memory
    /// cannot be locked: RLIMIT_MEMLOCK, a file that cannot be pinned) the registration is tried
    /// again with on-demand paging (`IBV_ACCESS_ON_DEMAND`), which devices with ODP support
    /// serve by faulting pages in as READs touch them.
    public func register(_ base: UnsafeMutableRawPointer, length: Int, access: Access) throws(KernelError) -> MemoryRegion {
        let flags: UInt32 = switch access {
        case .remoteRead: IBV_ACCESS_REMOTE_READ.rawValue
        case .localWrite: IBV_ACCESS_LOCAL_WRITE.rawValue
        }
        if let mr = ibv_reg_mr(pd, base, length, Int32(bitPattern: flags)) {
            return MemoryRegion(mr: mr, domain: self, onDemand: false)
        }
        let pinned = verbsError("ibv_reg_mr", detail: "\(length) bytes at \(hex(Int(bitPattern: base)))")
        if let mr = ibv_reg_mr(pd, base, length, Int32(bitPattern: flags | IBV_ACCESS_ON_DEMAND.rawValue)) {
            return MemoryRegion(mr: mr, domain: self, onDemand: true)
        }
        throw KernelError("ibv_reg_mr", pinned.errno,
                          detail: pinned.detail + ": pinning failed, and on-demand paging too (\(verbsError("ibv_reg_mr").errno))")
    }
}

/// A memory registration (`ibv_reg_mr`); deregistered when released (`ibv_dereg_mr`).
public final class MemoryRegion: @unchecked Sendable {
    let mr: UnsafeMutablePointer<ibv_mr>
    /// Kept alive while the registration lives (a domain cannot be freed before its regions).
    public let domain: ProtectionDomain
    /// Whether the registration uses on-demand paging (pinning failed).
    public let onDemand: Bool

    init(mr: UnsafeMutablePointer<ibv_mr>, domain: ProtectionDomain, onDemand: Bool) {
        self.mr = mr
        self.domain = domain
        self.onDemand = onDemand
    }

    deinit { ibv_dereg_mr(mr) }

    public var lkey: UInt32 { mr.pointee.lkey }
    public var rkey: UInt32 { mr.pointee.rkey }
    public var address: UInt64 { UInt64(UInt(bitPattern: mr.pointee.addr)) }
    public var length: Int { mr.pointee.length }
}

/// How deep a connection's queues are.
public struct QueueSettings: Sendable {
    /// Send queue entries: READs in flight at most.
    public var sendDepth: Int = 128
    /// READs the destination may have outstanding at the source's device at once (RDMA CM's
    /// initiator depth and responder resources), capped by both devices.
    public var readDepth: Int = 16

    public init(sendDepth: Int = 128, readDepth: Int = 16) {
        self.sendDepth = sendDepth
        self.readDepth = readDepth
    }
}

#endif
