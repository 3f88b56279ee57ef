#if RDMA
import CRDMA
import PagerKernel
import SystemPackage

/// One READ to post: `length` bytes from `remote` into registered local memory at `local`.
public struct ReadWork: @unchecked Sendable {
    public let id: WorkRequestID
    public let local: UnsafeMutableRawPointer
    public let lkey: UInt32
    public let length: Int
    public let remote: RemoteKeys.Remote

    public init(id: WorkRequestID, local: UnsafeMutableRawPointer, lkey: UInt32, length: Int, remote: RemoteKeys.Remote) {
        self.id = id
        self.local = local
        self.lkey = lkey
        self.length = length
        self.remote = remote
    }
}

/// A reliable-connected queue pair and its completion queue, used for one-sided READs. Does not
/// own them (the connection does); posting and polling go through libibverbs' inline
/// `ibv_post_send` and `ibv_poll_cq`, which call the provider's operation table.
public struct VerbsQueue: @unchecked Sendable {
    public let qp: UnsafeMutablePointer<ibv_qp>
    public let cq: UnsafeMutablePointer<ibv_cq>

    public init(qp: UnsafeMutablePointer<ibv_qp>, cq: UnsafeMutablePointer<ibv_cq>) {
        self.qp = qp
        self.cq = cq
    }

    /// Most READs chained in one post (a fault's page and its prefetch neighbours).
    public static let maximumChain = 64

    /// Posts `work` as one chain of signaled `IBV_WR_RDMA_READ` requests (`ibv_post_send`).
    /// Returns how many were posted: all of them, or the ones before the request the provider
    /// refused (with its error); the refused one and those after it were never posted.
    public func post(_ work: [ReadWork]) -> (posted: Int, error: KernelError?) {
        precondition(work.count <= Self.maximumChain, "\(work.count) READs in one chain, at most \(Self.maximumChain)")
        if work.isEmpty { return (0, nil) }
        return withUnsafeTemporaryAllocation(of: ibv_sge.self, capacity: work.count) { sges in
            withUnsafeTemporaryAllocation(of: ibv_send_wr.self, capacity: work.count) { requests in
                guard let first = requests.baseAddress, let sgeBase = sges.baseAddress else { return (0, nil) }
                for (i, w) in work.enumerated() {
                    precondition(w.length > 0 && w.length <= Int(UInt32.max))
                    sges.initializeElement(at: i, to: ibv_sge(addr: UInt64(UInt(bitPattern: w.local)), length: UInt32(w.length), lkey: w.lkey))
                    var request = ibv_send_wr()
                    request.wr_id = w.id.raw
                    request.next = i + 1 < work.count ? first + i + 1 : nil
                    request.sg_list = sgeBase + i
                    request.num_sge = 1
                    request.opcode = IBV_WR_RDMA_READ
                    request.send_flags = IBV_SEND_SIGNALED.rawValue
                    request.wr.rdma.remote_addr = w.remote.address
                    request.wr.rdma.rkey = w.remote.rkey
                    requests.initializeElement(at: i, to: request)
                }
                defer {
                    _ = requests.deinitialize()
                    _ = sges.deinitialize()
                }
                var bad: UnsafeMutablePointer<ibv_send_wr>? = nil
                // SAFETY: the chain and its scatter lists live until this call returns; the
                // provider copies them into its send queue before returning.
                let result = ibv_post_send(qp, first, &bad)
                if result == 0 { return (work.count, nil) }
                let posted = bad.map { $0 - first } ?? 0
                let error = KernelError("ibv_post_send", Errno(rawValue: result),
                                        detail: "READ \(posted + 1) of \(work.count) in the chain refused by the provider")
                return (max(0, min(posted, work.count)), error)
            }
        }
    }

    /// Takes up to `maximum` completions (`ibv_poll_cq`), each as the request's id and how it
    /// ended. A negative return from the provider (a broken completion queue) throws.
    public func poll(maximum: Int = 32, _ each: (WorkRequestID, CompletionStatus) -> Void) throws(KernelError) -> Int {
        try withUnsafeTemporaryAllocation(of: ibv_wc.self, capacity: maximum) { (entries) throws(KernelError) -> Int in
            guard let base = entries.baseAddress else { return 0 }
            // SAFETY: the provider writes at most `maximum` entries into the buffer it is given.
            let count = ibv_poll_cq(cq, Int32(maximum), base)
            if count < 0 { throw KernelError("ibv_poll_cq", Errno(rawValue: -count), detail: "the completion queue failed") }
            for i in 0..<Int(count) {
                let entry = base[i]
                each(WorkRequestID(raw: entry.wr_id), Self.status(entry))
            }
            return Int(count)
        }
    }

    /// Asks for an event on the completion channel at the next completion (`ibv_req_notify_cq`).
    public func requestNotification() throws(KernelError) {
        let result = ibv_req_notify_cq(cq, 0)
        if result != 0 { throw KernelError("ibv_req_notify_cq", Errno(rawValue: result)) }
    }

    static func status(_ entry: ibv_wc) -> CompletionStatus {
        switch entry.status {
        case IBV_WC_SUCCESS: .success
        case IBV_WC_WR_FLUSH_ERR: .flushed
        default:
            .failed(status: entry.status.rawValue,
                    detail: String(cString: ibv_wc_status_str(entry.status)) + ", vendor error \(entry.vendor_err)")
        }
    }
}
#endif
