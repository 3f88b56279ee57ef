#if RDMA
import CRDMA
import PagerRDMA
import Testing

/// The reader's work requests and completion handling through libibverbs' inline calls, against
/// the in-process device: every byte checked, and every failure puts pages back to missing.
@Suite("RDMA: READs through the verbs path (fake device)")
struct RDMAReaderTests {
    /// The source's memory (4 MiB, page i filled with a pattern of i), two staging pools, and a
    /// reader with a grant for region 1 covering the memory.
    final class Rig {
        let device = FakeVerbsDevice()
        let source: UnsafeMutableRawBufferPointer
        let small: UnsafeMutableRawBufferPointer
        let huge: UnsafeMutableRawBufferPointer
        let reader: RDMAReader
        static let rkey: UInt32 = 0xbeef
        static let sourceBytes = 4 << 20

        init(smallSlots: Int = 64, maximumPending: Int = 128) throws {
            source = .allocate(byteCount: Self.sourceBytes, alignment: 4096)
            for page in 0..<Self.sourceBytes / 4096 { fill(source.baseAddress! + page * 4096, page: page) }
            small = .allocate(byteCount: smallSlots * 4096, alignment: 4096)
            huge = .allocate(byteCount: 2 * (2 << 20), alignment: 2 << 20)
            small.initializeMemory(as: UInt8.self, repeating: 0xEE)
            huge.initializeMemory(as: UInt8.self, repeating: 0xEE)
            device.remote[Self.rkey] = source
            device.local[1] = small
            device.local[2] = huge
            var keys = RemoteKeys()
            try keys.record(.init(region: 1, rkey: Self.rkey, address: UInt64(UInt(bitPattern: source.baseAddress!)),
                                  length: UInt64(Self.sourceBytes)), regionLength: UInt64(Self.sourceBytes))
            reader = RDMAReader(queue: device.verbsQueue,
                                pools: [StagingMemory(base: small.baseAddress!, slotSize: 4096, count: smallSlots, lkey: 1),
                                        StagingMemory(base: huge.baseAddress!, slotSize: 2 << 20, count: 2, lkey: 2)],
                                keys: keys, maximumPending: maximumPending)
        }

        deinit {
            source.deallocate()
            small.deallocate()
            huge.deallocate()
        }

        /// Polls everything queued: arrived targets with their bytes checked against the
        /// source and their slots released, and failed targets.
        func drain() throws -> (arrived: [ReadTarget], failed: [ReadTarget], wrong: Int) {
            var arrived: [ReadTarget] = []
            var failed: [ReadTarget] = []
            var wrong = 0
            while try reader.poll({ event in
                switch event {
                case .arrived(let target, let pool, let slots, let bytes):
                    arrived.append(target)
                    let expected = UnsafeRawBufferPointer(start: source.baseAddress! + Int(target.offset), count: target.length)
                    if !bytes.elementsEqual(expected) { wrong += 1 }
                    reader.release(pool: pool, slots: slots)
                case .failed(let target, _):
                    failed.append(target)
                }
            }) > 0 {}
            return (arrived, failed, wrong)
        }
    }

    static func page(_ index: Int, pages: Int = 1) -> ReadTarget {
        ReadTarget(region: 1, offset: UInt64(index * 4096), length: pages * 4096)
    }

    @Test("a fault's page and its neighbours in one chain, a 64 KiB block and a 2 MiB unit: every byte right")
    func reads() throws {
        let rig = try Rig()
        let targets = [Self.page(3), Self.page(16, pages: 16), ReadTarget(region: 1, offset: 2 << 20, length: 2 << 20)]
        #expect(rig.reader.read(targets).isEmpty)
        #expect(rig.device.history.count == 3 && rig.reader.pending == 3)
        let source = UInt64(UInt(bitPattern: rig.source.baseAddress!))
        for (request, target) in zip(rig.device.history, targets) {
            #expect(request.opcode == IBV_WR_RDMA_READ && request.signaled && request.rkey == Rig.rkey)
            #expect(request.remoteAddress == source + target.offset && request.length == target.length)
        }
        // The 2 MiB unit lands in a huge slot, the others in 4 KiB slots.
        #expect(rig.device.history[2].lkey == 2 && rig.device.history[0].lkey == 1 && rig.device.history[1].lkey == 1)
        rig.device.run()
        let (arrived, failed, wrong) = try rig.drain()
        #expect(arrived == targets && failed.isEmpty && wrong == 0)
        #expect(rig.reader.pending == 0 && rig.reader.readsCompleted == 3 && rig.reader.bytesRead == 4096 * 17 + (2 << 20))
    }

    @Test("completions in any order reach the READ they belong to")
    func reordered() throws {
        let rig = try Rig()
        let targets = (0..<12).map { Self.page($0 * 5, pages: 1 + $0 % 3) }
        #expect(rig.reader.read(targets).isEmpty)
        rig.device.run(reversed: true)
        let (arrived, _, wrong) = try rig.drain()
        #expect(Set(arrived) == Set(targets) && arrived.count == targets.count && wrong == 0)
    }

    @Test("an error completion fails the queue: that READ and those flushed after it are missing again, later READs go to TCP")
    func errorCompletion() throws {
        let rig = try Rig()
        let targets = (0..<6).map { Self.page($0 * 2) }
        #expect(rig.reader.read(targets).isEmpty)
        rig.device.run(2)
        rig.device.failNext = IBV_WC_RETRY_EXC_ERR
        rig.device.run()
        let (arrived, failed, wrong) = try rig.drain()
        #expect(arrived == Array(targets[0..<2]) && failed == Array(targets[2...]) && wrong == 0)
        guard case .failed(let reason) = rig.reader.state else { Issue.record("the reader is still live"); return }
        #expect(reason.contains("transport retry counter exceeded"))
        // Slots 0-1 took the two that arrived; 2-5, given to the failed READs, still hold the fill.
        #expect(rig.small[0..<4096].allSatisfy { $0 == 0xEE } == false)
        #expect(rig.small[2 * 4096..<6 * 4096].allSatisfy { $0 == 0xEE })
        let later = [Self.page(100)]
        #expect(rig.reader.read(later) == later)
    }

    @Test("a READ outside its grant breaks the queue pair with a remote access error, never a wrong page")
    func remoteAccessError() throws {
        let rig = try Rig()
        rig.device.remote[Rig.rkey] = UnsafeMutableRawBufferPointer(rebasing: rig.source[0..<8192])
        #expect(rig.reader.read([Self.page(0), Self.page(5), Self.page(1)]).isEmpty)
        rig.device.run()
        let (arrived, failed, _) = try rig.drain()
        #expect(arrived == [Self.page(0)] && failed == [Self.page(5), Self.page(1)])
    }

    @Test("the provider refuses the third READ of a chain: two are posted, the rest come back for TCP")
    func postRefused() throws {
        let rig = try Rig()
        rig.device.refuseAt = 2
        let targets = (0..<5).map { Self.page($0 * 3) }
        let notPosted = rig.reader.read(targets)
        #expect(notPosted == Array(targets[2...]))
        #expect(rig.reader.pending == 2)
        rig.device.run()
        let (arrived, _, wrong) = try rig.drain()
        #expect(arrived == Array(targets[0..<2]) && wrong == 0)
        // A full send queue (ENOMEM) refuses for now only; any other refusal ends the queue.
        #expect(rig.reader.state == .live)
        rig.device.refuseAt = 0
        rig.device.refuseWith = 22 // EINVAL
        #expect(rig.reader.read([Self.page(40)]) == [Self.page(40)])
        guard case .failed = rig.reader.state else { Issue.record("an EINVAL refusal left the queue live"); return }
        #expect(rig.reader.read([Self.page(41)]) == [Self.page(41)])
    }

    @Test("no more READs in flight than the send queue holds: the rest come back for TCP")
    func sendQueueDepth() throws {
        let rig = try Rig(maximumPending: 8)
        let targets = (0..<12).map { Self.page($0 * 2) }
        #expect(rig.reader.read(targets) == Array(targets[8...]))
        #expect(rig.reader.pending == 8 && rig.device.history.count == 8)
        rig.device.run(3)
        _ = try rig.drain()
        #expect(rig.reader.read(Array(targets[8...])) == [targets[11]])
    }

    @Test("a destroyed queue pair: what was in flight is missing again; late completions install nothing")
    func destroyed() throws {
        let rig = try Rig()
        let targets = (0..<4).map { Self.page($0 * 7) }
        #expect(rig.reader.read(targets).isEmpty)
        let history = rig.device.history
        rig.device.destroyQueue()
        #expect(rig.reader.abandon(reason: "the source disconnected") == targets)
        // A completion that still comes for an abandoned READ (its wr_id) is ignored.
        for request in history {
            var wc = ibv_wc()
            wc.wr_id = request.wrID
            wc.status = IBV_WC_SUCCESS
            rig.device.completions.append(wc)
        }
        let (arrived, failed, _) = try rig.drain()
        #expect(arrived.isEmpty && failed.isEmpty)
        #expect(rig.reader.read([Self.page(1)]) == [Self.page(1)])
    }

    @Test("no grant, a READ past the grant, or a full pool: returned to be fetched over TCP")
    func notPosted() throws {
        let rig = try Rig(smallSlots: 4)
        let unknown = ReadTarget(region: 2, offset: 0, length: 4096)
        let past = ReadTarget(region: 1, offset: UInt64(Rig.sourceBytes - 4096), length: 8192)
        let fits = Self.page(0, pages: 3)
        let full = Self.page(8, pages: 2)
        #expect(rig.reader.read([unknown, past, fits, full]) == [unknown, past, full])
        rig.device.run()
        let (arrived, _, _) = try rig.drain()
        #expect(arrived == [fits])
        #expect(rig.reader.read([full]).isEmpty)
    }
}

/// Page `page`'s pattern: its index in every 8 bytes, mixed with the byte offset.
func fill(_ page: UnsafeMutableRawPointer, page index: Int) {
    for word in 0..<512 { page.storeBytes(of: UInt64(index) << 16 | UInt64(word), toByteOffset: word * 8, as: UInt64.self) }
}
#endif
