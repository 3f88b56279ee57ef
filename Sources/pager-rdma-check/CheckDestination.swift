#if RDMA
import PagerKernel
import PagerRDMA

/// The destination end of the check: a queue pair admitted by the source, staging pools of
/// 4 KiB and 2 MiB slots registered in its domain, and a reader with the source's grant.
/// Every READ's bytes are compared with the source's memory.
final class CheckDestination {
    let connection: RDMAConnection
    let reader: RDMAReader
    let expected: UnsafeRawBufferPointer
    private let small: UnsafeMutableRawBufferPointer
    private let huge: UnsafeMutableRawBufferPointer
    private let registrations: [MemoryRegion]
    private var random: UInt64 = 0x2545_F491_4F6C_DD1D

    static let smallSlots = 512
    static let hugeSlots = 4

    init(address: String, port: UInt16, session: UInt64, key: [UInt8], channel: AdmissionRequest.Channel, source: CheckSource) throws {
        let request = AdmissionRequest(channel: channel, session: session, key: key)
        connection = try RDMAConnection.connect(to: address, port: port, privateData: request.bytes, until: .after(nanoseconds: 10_000_000_000))
        small = .allocate(byteCount: Self.smallSlots * 4096, alignment: 4096)
        huge = .allocate(byteCount: Self.hugeSlots * (2 << 20), alignment: 2 << 20)
        let smallRegion = try connection.domain.register(small.baseAddress!, length: small.count, access: .localWrite)
        let hugeRegion = try connection.domain.register(huge.baseAddress!, length: huge.count, access: .localWrite)
        registrations = [smallRegion, hugeRegion]
        guard let grant = source.grant(session) else { throw CheckFailure("the source has no registration for session \(session)") }
        var keys = RemoteKeys()
        try keys.record(grant, regionLength: UInt64(CheckSource.regionBytes))
        reader = RDMAReader(queue: connection.queue,
                            pools: [StagingMemory(base: small.baseAddress!, slotSize: 4096, count: Self.smallSlots, lkey: smallRegion.lkey),
                                    StagingMemory(base: huge.baseAddress!, slotSize: 2 << 20, count: Self.hugeSlots, lkey: hugeRegion.lkey)],
                            keys: keys)
        expected = UnsafeRawBufferPointer(source.memory)
    }

    deinit {
        small.deallocate()
        huge.deallocate()
    }

    private func nextPage(_ pages: Int) -> Int {
        random ^= random << 13
        random ^= random >> 7
        random ^= random << 17
        return Int(random % UInt64(CheckSource.regionBytes / 4096 / pages)) * pages
    }

    private struct Tally {
        var arrived = 0
        var failed = 0
        var wrong = 0
        var bytes = 0
    }

    /// Waits for completions until `pending` of them are in, checking and releasing each.
    private func collect(_ tally: inout Tally, until pending: Int, deadline: Deadline) throws {
        while reader.pending > pending {
            let n = try reader.waitForCompletions(on: connection, until: deadline) { event in
                switch event {
                case .arrived(let target, let pool, let slots, let bytes):
                    tally.arrived += 1
                    tally.bytes += target.length
                    if !bytes.elementsEqual(UnsafeRawBufferPointer(rebasing: expected[Int(target.offset)..<Int(target.offset) + target.length])) {
                        tally.wrong += 1
                    }
                    reader.release(pool: pool, slots: slots)
                case .failed:
                    tally.failed += 1
                }
            }
            if n == 0 { throw CheckFailure("\(reader.pending) READs not completed within \(deadline.allowedDescription)") }
        }
    }

    private func requireClean(_ tally: Tally, _ count: Int) throws {
        guard tally.wrong == 0 else { throw CheckFailure("\(tally.wrong) of \(tally.arrived) READs delivered wrong bytes") }
        guard tally.failed == 0, tally.arrived == count else {
            throw CheckFailure("\(tally.arrived) of \(count) READs arrived, \(tally.failed) failed (\(reader.state))")
        }
    }

    /// One READ at a time of `pages` random pages: the fault path's latency.
    func latency(pages: Int, count: Int) throws -> String {
        var tally = Tally()
        var samples: [UInt64] = []
        for _ in 0..<count {
            let target = ReadTarget(region: 1, offset: UInt64(nextPage(pages) * 4096), length: pages * 4096)
            let start = monotonicNanoseconds()
            guard reader.read([target]).isEmpty else { throw CheckFailure("the READ was not posted (\(reader.state))") }
            try collect(&tally, until: 0, deadline: .after(nanoseconds: 5_000_000_000))
            samples.append(monotonicNanoseconds() - start)
        }
        try requireClean(tally, count)
        return "\(pages * 4) KiB READ \(percentiles(samples)), every byte verified"
    }

    /// A fault's page and its 15 neighbours as one chain of 16 READs.
    func chained(count: Int) throws -> String {
        var tally = Tally()
        var samples: [UInt64] = []
        for _ in 0..<count {
            let block = nextPage(16)
            let targets = (0..<16).map { ReadTarget(region: 1, offset: UInt64((block + $0) * 4096), length: 4096) }
            let start = monotonicNanoseconds()
            guard reader.read(targets).isEmpty else { throw CheckFailure("the chain was not posted whole (\(reader.state))") }
            try collect(&tally, until: 0, deadline: .after(nanoseconds: 5_000_000_000))
            samples.append(monotonicNanoseconds() - start)
        }
        try requireClean(tally, count * 16)
        return "16 x 4 KiB in one post \(percentiles(samples)), every byte verified"
    }

    /// The whole region in `unit` READs with `inFlight` outstanding: the push's rate.
    func throughput(unit: Int, inFlight: Int, bytes: Int) throws -> String {
        var tally = Tally()
        var offset = 0
        let start = monotonicNanoseconds()
        while offset < bytes || reader.pending > 0 {
            while offset < bytes, reader.pending < inFlight {
                let target = ReadTarget(region: 1, offset: UInt64(offset), length: unit)
                guard reader.read([target]).isEmpty else { throw CheckFailure("READ at \(offset) not posted (\(reader.state))") }
                offset += unit
            }
            try collect(&tally, until: reader.pending - 1, deadline: .after(nanoseconds: 10_000_000_000))
        }
        let seconds = Double(monotonicNanoseconds() - start) / 1e9
        try requireClean(tally, bytes / unit)
        return "\(bytes >> 20) MiB in \(unit >> 10) KiB READs, \(inFlight) in flight: \(fixed(Double(bytes) / seconds / 1e6)) MB/s, every byte verified"
    }

    /// READs in flight when the source tears the queue pair down: each one either arrived with
    /// the right bytes or is back to missing, nothing wrong is ever handed out, and the
    /// disconnect reaches this side (where the pager abandons what is still in flight).
    func tornDown(_ tearDown: () -> Void) throws -> String {
        var tally = Tally()
        // 10 MiB in flight (four 2 MiB units, 32 blocks of 64 KiB): far more than a tear-down takes.
        let units = (0..<4).map { ReadTarget(region: 1, offset: UInt64($0 * (2 << 20)), length: 2 << 20) }
        let blocks = (0..<32).map { ReadTarget(region: 1, offset: UInt64((8 << 20) + $0 * (64 << 10)), length: 64 << 10) }
        let targets = units + blocks
        let notPosted = reader.read(targets).count
        let posted = reader.pending
        tearDown()
        var disconnected = false
        let deadline = Deadline.after(nanoseconds: 10_000_000_000)
        while !disconnected, deadline.remainingNanoseconds > 0 {
            if reader.pending > 0 {
                do { try collect(&tally, until: reader.pending - 1, deadline: .after(nanoseconds: 50_000_000)) } catch {}
            }
            if let event = try connection.nextEvent(until: .after(nanoseconds: reader.pending > 0 ? 1_000_000 : 100_000_000)) {
                disconnected = event.contains("DISCONNECTED")
            }
        }
        guard disconnected else { throw CheckFailure("no DISCONNECTED event within \(deadline.allowedDescription)") }
        let missing = reader.abandon(reason: "the source disconnected").count
        guard tally.wrong == 0 else { throw CheckFailure("\(tally.wrong) READs delivered wrong bytes") }
        guard tally.arrived + tally.failed + missing + notPosted == targets.count else {
            throw CheckFailure("\(targets.count) READs: \(tally.arrived) arrived, \(tally.failed) failed, \(missing) abandoned, \(notPosted) not posted")
        }
        guard reader.read([targets[0]]).count == 1 else { throw CheckFailure("a READ was posted on the torn-down queue pair") }
        return "\(posted) READs (10 MiB) in flight at the tear-down: \(tally.arrived) arrived intact, \(tally.failed) failed, "
            + "\(missing) back to missing at the disconnect; the reader refuses new READs"
    }
}
#endif
