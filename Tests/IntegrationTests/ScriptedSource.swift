import PagerHarness
import PagerKernel
import PagerTransport
import PagerTrust
import PagerWire
import PagerWorkloads

/// A source that follows a script instead of serving memory: for destinations whose source
/// misbehaves, deliberately or by a bug. It answers every HELLO with WELCOME (announcing
/// `regionCount` regions, whatever `regions` holds) and the REGION frames given, or with an
/// ERROR; after the handshake of the second connection (the push channel, which HELLO marks
/// as a resume), it sends `push`. Then it says nothing and keeps every connection open, so
/// what the destination does is its own decision, not a reaction to a close.
///
/// It holds the test key (``TestKeys``): a HELLO that offers authentication is authenticated
/// as `pagerd source` would, and AUTH_CONFIRM follows the REGIONs, so the script plays a
/// source that has the key and still misbehaves (a compromised or buggy peer, which is
/// what the destination's checks are for).
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
                    guard var authenticator = ScriptedSource.authenticate(channel, hello) else { continue }
                    func send(_ m: Message) {
                        authenticator?.sent(m)
                        try? channel.send(m)
                    }
                    send(.welcome(Welcome(features: hello.features.intersection(s.features.union(.authentication)),
                                          regionCount: s.regionCount ?? UInt32(s.regions.count), session: 0x5eed)))
                    if !s.afterWelcome.isEmpty { try? ScriptedSource.write(s.afterWelcome, to: socket) }
                    for r in s.regions { send(.region(r)) }
                    if let authenticator { try? channel.send(authenticator.confirmation().0) }
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

    /// With a HELLO that offers authentication: AUTH_CHALLENGE, then AUTH_RESPONSE verified
    /// with the test key (session token zeros: WELCOME's token here). `.some(nil)` without;
    /// nil if the destination's response did not verify.
    private static func authenticate(_ channel: FrameChannel, _ hello: Hello) -> ServerAuthenticator?? {
        guard hello.features.contains(.authentication) else { return .some(nil) }
        guard var authenticator = try? ServerAuthenticator(ring: TestKeys.ring, hello: hello) else { return nil }
        try? channel.send(authenticator.challenge())
        guard case .message(.authResponse(let nonce, let share, let mac))? = try? channel.receive(),
              (try? authenticator.verify(clientNonce: nonce, share: share, mac: mac, resumeToken: Array(repeating: 0, count: 16),
                                         resuming: hello.resumeSession != 0)) != nil
        else { return nil }
        return .some(authenticator)
    }

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
