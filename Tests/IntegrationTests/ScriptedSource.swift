import PagerKernel
import PagerTransport
import PagerWire
import PagerWorkloads

/// A source that follows a script instead of serving memory: for destinations whose source
/// misbehaves, deliberately or by a bug. It answers every HELLO with WELCOME (announcing
/// `regionCount` regions, whatever `regions` holds) and the REGION frames given, or with an
/// ERROR; after the handshake of the second connection (the push channel, which HELLO marks
/// as a resume), it sends `push`. Then it says nothing and keeps every connection open, so
/// what the destination does is its own decision, not a reaction to a close.
final class ScriptedSource: @unchecked Sendable {
    /// What goes on the wire after the handshake: a message, or bytes as they are.
    enum Step: Sendable {
        case message(Message)
        case bytes([UInt8])
    }

    struct Script: Sendable {
        var regions: [RegionDescriptor]
        /// WELCOME's region_count; nil: `regions.count`.
        var regionCount: UInt32?
        /// Sent on the push channel once its handshake is done.
        var push: [Step] = []
        /// Bytes sent right after WELCOME, before any REGION (on every channel).
        var afterWelcome: [UInt8] = []
        /// Features accepted, of those the destination offers.
        var features: Features = [.resume, .hugePages, .checksums, .invalidation]
    }

    enum Answer {
        case script(Script)
        case refuse(ProtocolError)

        static func regions(_ regions: [RegionDescriptor]) -> Answer { .script(Script(regions: regions)) }
    }

    let listener: TCPListener
    private var thread: KernelThread?

    init(_ answer: Answer) throws {
        listener = try TCPListener(Endpoint(host: "127.0.0.1", port: 0))
        thread = try KernelThread(name: "scripted-src") { [listener] in
            var open: [FrameChannel] = []
            while let socket = try? listener.accept() {
                let channel = FrameChannel(socket)
                guard case .message(.hello(let hello))? = try? channel.receive() else { continue }
                open.append(channel) // kept open: the destination must not see a close
                switch answer {
                case .refuse(let e):
                    try? channel.send(.error(e))
                case .script(let s):
                    try? channel.send(.welcome(Welcome(features: hello.features.intersection(s.features),
                                                       regionCount: s.regionCount ?? UInt32(s.regions.count), session: 0x5eed)))
                    if !s.afterWelcome.isEmpty { try? ScriptedSource.write(s.afterWelcome, to: socket) }
                    for r in s.regions { try? channel.send(.region(r)) }
                    guard hello.resumeSession != 0 else { continue }
                    for step in s.push {
                        switch step {
                        case .message(let m): try? channel.send(m)
                        case .bytes(let b): try? ScriptedSource.write(b, to: socket)
                        }
                    }
                }
            }
        }
    }

    var endpoint: Endpoint { listener.endpoint }

    deinit {
        listener.shutdown()
        thread?.join()
    }

    private static func write(_ bytes: [UInt8], to socket: TCPSocket) throws {
        try bytes.withUnsafeBytes { try socket.writeAll([$0]) }
    }

    /// PAGE_DATA (push) with the bytes `pager-workload fill --seed seed` writes at `pages`,
    /// the pattern `pager-workload run --seed seed` checks.
    static func patternPages(_ pages: Range<Int>, seed: UInt64, region: UInt32 = 1, checksums: Bool = false) -> Message {
        var data = [UInt8](repeating: 0, count: pages.count * basePageSize)
        data.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for (i, p) in pages.enumerated() {
                for w in 0..<basePageSize / 8 { words[i * basePageSize / 8 + w] = MigrationPattern.word(page: p, word: w, seed: seed) }
            }
        }
        let sums = checksums ? (0..<pages.count).map { CRC32C.checksum(Array(data[$0 * basePageSize..<($0 + 1) * basePageSize])) } : nil
        return .pageData(PageData(requestID: 0, region: region, offset: UInt64(pages.lowerBound * basePageSize),
                                  length: UInt64(pages.count * basePageSize), flags: .push, encoding: .raw, checksums: sums, data: data))
    }
}
