#if RDMA
import PagerKernel
import PagerRDMA
import Synchronization

/// The source end of the check: admits queue pairs through an `AdmissionGate`, gives each
/// session a protection domain with the region registered for remote READ in it, and serves
/// the same region over TCP for the baseline. Runs its accept loop on its own thread.
final class CheckSource: @unchecked Sendable {
    static let regionBytes = 32 << 20
    let listener: RDMAListener
    let memory: UnsafeMutableRawBufferPointer
    private struct Session {
        let domain: ProtectionDomain
        let region: MemoryRegion
    }
    private struct State {
        var gate = AdmissionGate()
        var sessions: [UInt64: Session] = [:]
        var connections: [(session: UInt64, channel: AdmissionRequest.Channel, connection: RDMAConnection)] = []
        var running = true
        var problems: [String] = []
    }
    private let state = Mutex(State())
    private var thread: KernelThread?

    var port: UInt16 { listener.port }

    init(address: String) throws {
        memory = .allocate(byteCount: Self.regionBytes, alignment: 2 << 20)
        for page in 0..<Self.regionBytes / 4096 { patternPage(memory.baseAddress! + page * 4096, index: page) }
        listener = try RDMAListener(address: address)
        thread = try KernelThread(name: "check-source") { [self] in acceptLoop() }
    }

    func open(session: UInt64, key: [UInt8]) { state.withLock { $0.gate.open(session: session, key: key) } }

    /// What an RDMA_KEY frame would carry for `session` (after its first queue pair came).
    func grant(_ session: UInt64) -> RemoteKeys.Grant? {
        state.withLock { state in
            state.sessions[session].map { .init(region: 1, rkey: $0.region.rkey, address: $0.region.address, length: UInt64($0.region.length)) }
        }
    }

    /// Tears down every accepted queue pair (`rdma_disconnect`, then destroyed).
    func disconnectAll() {
        let dropped = state.withLock { state in
            let all = state.connections
            state.connections.removeAll()
            for c in all { state.gate.disconnected(session: c.session, channel: c.channel) }
            return all
        }
        for c in dropped { c.connection.disconnect() }
    }

    func stop() {
        state.withLock { $0.running = false }
        thread?.join()
        disconnectAll()
    }

    private func acceptLoop() {
        while state.withLock({ $0.running }) {
            do {
                guard let request = try listener.nextRequest(until: .after(nanoseconds: 100_000_000)) else { continue }
                try admit(request)
            } catch {
                state.withLock { $0.problems.append("\(error)") }
                print("source: \(error)")
            }
        }
    }

    private func admit(_ request: ConnectionRequest) throws {
        let admitted: AdmissionRequest
        do {
            admitted = try state.withLock { (state) throws(AdmissionError) in try state.gate.admit(request.privateData) }
        } catch {
            print("source: refused a queue pair: \(error)")
            request.reject(error.reasonForPeer)
            return
        }
        guard let context = request.context else { throw CheckFailure("a connection request without a device") }
        let existing = state.withLock { $0.sessions[admitted.session] }
        let session: Session
        if let existing {
            session = existing
        } else {
            let domain = try ProtectionDomain(context: context)
            let region = try domain.register(memory.baseAddress!, length: memory.count, access: .remoteRead)
            session = Session(domain: domain, region: region)
        }
        let connection: RDMAConnection
        do { connection = try request.accept(domain: session.domain, until: .after(nanoseconds: 5_000_000_000)) } catch {
            state.withLock { $0.gate.disconnected(session: admitted.session, channel: admitted.channel) }
            throw error
        }
        state.withLock { state in
            state.sessions[admitted.session] = session
            state.connections.append((admitted.session, admitted.channel, connection))
        }
    }
}

/// The check's page pattern: page `index` holds its index mixed into every word.
func patternPage(_ page: UnsafeMutableRawPointer, index: Int) {
    for word in 0..<512 { page.storeBytes(of: UInt64(index) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(word), toByteOffset: word * 8, as: UInt64.self) }
}
#endif
