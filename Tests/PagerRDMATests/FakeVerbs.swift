#if RDMA
import CRDMA
import PagerRDMA

/// An RDMA device in process memory, for the verbs path's tests: a zeroed `ibv_context`
/// whose operation table points at the functions below, and a queue pair and completion queue
/// on it. libibverbs' inline `ibv_post_send` and `ibv_poll_cq` call through that table, so
/// the reader's real work requests arrive here. READs are emulated on local buffers ("remote"
/// registrations by rkey), executed only when a test says (`run`), in any order, with
/// injectable failures.
final class FakeVerbsDevice {
    struct Posted {
        let wrID: UInt64
        let local: UnsafeMutableRawPointer
        let lkey: UInt32
        let length: Int
        let remoteAddress: UInt64
        let rkey: UInt32
        let opcode: ibv_wr_opcode
        let signaled: Bool
    }

    let context: UnsafeMutablePointer<ibv_context>
    let qp: UnsafeMutablePointer<ibv_qp>
    let cq: UnsafeMutablePointer<ibv_cq>
    /// Remote registrations by rkey: the source's memory.
    var remote: [UInt32: UnsafeMutableRawBufferPointer] = [:]
    /// Local keys with the memory they cover.
    var local: [UInt32: UnsafeMutableRawBufferPointer] = [:]
    /// READs posted, not yet executed.
    var posted: [Posted] = []
    /// Every work request ever posted, as the provider saw it.
    var history: [Posted] = []
    var completions: [ibv_wc] = []
    /// The queue pair is in the error state: whatever runs after this is flushed.
    var inError = false
    /// The next READ executed fails with this status (and puts the queue pair in error).
    var failNext: ibv_wc_status? = nil
    /// `post_send` refuses the work request at this index of the next chain.
    var refuseAt: Int? = nil
    /// The errno `post_send` refuses with (ENOMEM: the send queue is full).
    var refuseWith: Int32 = 12

    var verbsQueue: VerbsQueue { VerbsQueue(qp: qp, cq: cq) }

    init() {
        context = .allocate(capacity: 1)
        context.initialize(to: ibv_context())
        qp = .allocate(capacity: 1)
        qp.initialize(to: ibv_qp())
        cq = .allocate(capacity: 1)
        cq.initialize(to: ibv_cq())
        context.pointee.ops.post_send = fakePostSend
        context.pointee.ops.poll_cq = fakePollCQ
        context.pointee.ops.req_notify_cq = fakeRequestNotify
        qp.pointee.context = context
        qp.pointee.qp_num = 0x11
        qp.pointee.qp_type = IBV_QPT_RC
        cq.pointee.context = context
        // The callbacks find the device through the queues' user context pointers.
        let me = Unmanaged.passUnretained(self).toOpaque()
        qp.pointee.qp_context = me
        cq.pointee.cq_context = me
    }

    deinit {
        context.deallocate()
        qp.deallocate()
        cq.deallocate()
    }

    /// Executes `count` posted READs (all by default) in `order`, queueing their completions.
    func run(_ count: Int? = nil, reversed: Bool = false) {
        let n = min(count ?? posted.count, posted.count)
        var batch = Array(posted.prefix(n))
        posted.removeFirst(n)
        if reversed { batch.reverse() }
        for request in batch { execute(request) }
    }

    /// The queue pair is destroyed: posted READs vanish without completions.
    func destroyQueue() { posted.removeAll() }

    private func execute(_ request: Posted) {
        var wc = ibv_wc()
        wc.wr_id = request.wrID
        wc.opcode = IBV_WC_RDMA_READ
        wc.qp_num = qp.pointee.qp_num
        if inError {
            wc.status = IBV_WC_WR_FLUSH_ERR
        } else if let status = failNext {
            failNext = nil
            inError = true
            wc.status = status
        } else if let source = remote[request.rkey], let base = source.baseAddress,
                  request.remoteAddress >= UInt64(UInt(bitPattern: base)),
                  request.remoteAddress + UInt64(request.length) <= UInt64(UInt(bitPattern: base)) + UInt64(source.count),
                  let target = local[request.lkey], let targetBase = target.baseAddress,
                  request.local >= targetBase, request.local + request.length <= targetBase + target.count {
            let from = UnsafeRawPointer(bitPattern: UInt(request.remoteAddress))!
            request.local.copyMemory(from: from, byteCount: request.length)
            wc.status = IBV_WC_SUCCESS
            wc.byte_len = UInt32(request.length)
        } else {
            // A bad rkey, range or lkey: what a device reports, and the queue pair breaks.
            inError = true
            wc.status = IBV_WC_REM_ACCESS_ERR
        }
        if request.signaled { completions.append(wc) }
    }

    fileprivate func postSend(_ first: UnsafeMutablePointer<ibv_send_wr>,
                              _ bad: UnsafeMutablePointer<UnsafeMutablePointer<ibv_send_wr>?>?) -> Int32 {
        var next: UnsafeMutablePointer<ibv_send_wr>? = first
        var index = 0
        let refuse = refuseAt
        refuseAt = nil
        while let wr = next {
            if index == refuse {
                bad?.pointee = wr
                return refuseWith
            }
            let sge = wr.pointee.sg_list!.pointee
            let request = Posted(wrID: wr.pointee.wr_id, local: UnsafeMutableRawPointer(bitPattern: UInt(sge.addr))!, lkey: sge.lkey,
                                 length: Int(sge.length), remoteAddress: wr.pointee.wr.rdma.remote_addr, rkey: wr.pointee.wr.rdma.rkey,
                                 opcode: wr.pointee.opcode, signaled: wr.pointee.send_flags & IBV_SEND_SIGNALED.rawValue != 0)
            precondition(wr.pointee.num_sge == 1)
            posted.append(request)
            history.append(request)
            next = wr.pointee.next
            index += 1
        }
        return 0
    }

    fileprivate func pollCQ(_ maximum: Int32, _ entries: UnsafeMutablePointer<ibv_wc>) -> Int32 {
        let n = min(Int(maximum), completions.count)
        for i in 0..<n { entries[i] = completions[i] }
        completions.removeFirst(n)
        return Int32(n)
    }
}

private func device(_ context: UnsafeMutableRawPointer?) -> FakeVerbsDevice {
    Unmanaged<FakeVerbsDevice>.fromOpaque(context!).takeUnretainedValue()
}

private let fakePostSend: @convention(c) (UnsafeMutablePointer<ibv_qp>?, UnsafeMutablePointer<ibv_send_wr>?,
                                          UnsafeMutablePointer<UnsafeMutablePointer<ibv_send_wr>?>?) -> Int32 = { qp, wr, bad in
    device(qp!.pointee.qp_context).postSend(wr!, bad)
}

private let fakePollCQ: @convention(c) (UnsafeMutablePointer<ibv_cq>?, Int32, UnsafeMutablePointer<ibv_wc>?) -> Int32 = { cq, maximum, entries in
    device(cq!.pointee.cq_context).pollCQ(maximum, entries!)
}

private let fakeRequestNotify: @convention(c) (UnsafeMutablePointer<ibv_cq>?, Int32) -> Int32 = { _, _ in 0 }
#endif
