import Glibc
import PagerDestination
import PagerHarness
import PagerKernel
import PagerTransport
import PagerTrust
import PagerWire
import Testing

/// What a peer gets from a `pagerd source` with a key when it cannot prove it holds that key:
/// an ERROR naming why, then the close, and never a WELCOME, a REGION or a page.
@Suite("Authentication against a real source", .serialized, .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct AuthenticationTests {
    static let zeros = [UInt8](repeating: 0, count: 16)

    /// Every frame `channel` receives until the source closes it (at most `limit`): the
    /// source must refuse, then close.
    func drain(_ channel: FrameChannel, limit: Int = 8) -> (frames: [String], error: ProtocolError?) {
        var frames: [String] = [], error: ProtocolError?
        for _ in 0..<limit {
            do {
                let incoming = try channel.receive()
                frames.append(incoming.typeName)
            } catch ChannelError.peerError(_, let e) {
                error = e
            } catch {
                break
            }
        }
        return (frames, error)
    }

    func expectRefusal(_ channel: FrameChannel, _ fragment: String, code: ErrorCode = .authenticationFailed,
                       sourceLocation: SourceLocation = #_sourceLocation) {
        let (frames, error) = drain(channel)
        #expect(frames.isEmpty, "the source sent \(frames) to a peer that did not authenticate", sourceLocation: sourceLocation)
        #expect(error?.code == code, "\(String(describing: error))", sourceLocation: sourceLocation)
        #expect(error?.message.contains(fragment) == true, "\(String(describing: error))", sourceLocation: sourceLocation)
    }

    static func randomKey(_ identity: String) throws -> PresharedKey {
        try PresharedKey(identity: identity, secret: secureRandomBytes(32))
    }

    @Test("a HELLO without authentication gets authentication-failed, nothing else")
    func noAuthentication() throws {
        let source = try SourceUnderTest()
        let channel = FrameChannel(try TCPSocket.connect(source.endpoint))
        try channel.send(.hello(Hello(features: [.checksums, .resume], clientName: "spec-reader")))
        expectRefusal(channel, "requires authentication")
        #expect(try source.stillServes())
    }

    @Test("an unknown key identity is refused before any challenge")
    func unknownIdentity() throws {
        let source = try SourceUnderTest()
        let channel = FrameChannel(try TCPSocket.connect(source.endpoint))
        var client = try ClientAuthenticator(key: Self.randomKey("intruder"))
        try channel.send(.hello(client.hello(Hello(features: [], clientName: "x"))))
        expectRefusal(channel, "no key named \"intruder\"")
    }

    @Test("the right identity with another key: AUTH_RESPONSE does not verify, no WELCOME follows")
    func wrongKey() throws {
        let source = try SourceUnderTest()
        let channel = FrameChannel(try TCPSocket.connect(source.endpoint))
        var client = try ClientAuthenticator(key: Self.randomKey(TestKeys.identity))
        try channel.send(.hello(client.hello(Hello(features: [.checksums], clientName: "x"))))
        guard case .message(.authChallenge(let nonce, let share)) = try channel.receive() else { Issue.record("no challenge"); return }
        try channel.send(try client.respond(challengeNonce: nonce, share: share, resumeToken: Self.zeros))
        expectRefusal(channel, "did not verify")
        #expect(try source.stillServes())
        source.process.signal(SIGTERM)
        #expect(source.process.wait(timeoutMilliseconds: 10_000) == 0)
        #expect(source.process.output.contains("1 connection(s) refused for failed authentication"), "\(source.process.output)")
        #expect(source.process.output.contains("authentication-failed"), "the refusal is logged: \(source.process.output)")
    }

    @Test("a PAGE_REQUEST instead of AUTH_RESPONSE is refused and answered with no page")
    func requestBeforeAuthentication() throws {
        let source = try SourceUnderTest()
        let channel = FrameChannel(try TCPSocket.connect(source.endpoint))
        var client = try ClientAuthenticator(key: TestKeys.key)
        try channel.send(.hello(client.hello(Hello(features: [.checksums], clientName: "x"))))
        guard case .message(.authChallenge) = try channel.receive() else { Issue.record("no challenge"); return }
        try channel.send(.pageRequest(PageRequest(requestID: 1, region: 1, offset: 0, length: 4096, flags: .urgent)))
        expectRefusal(channel, "expected AUTH_RESPONSE", code: .unexpectedMessage)
    }

    @Test("a recorded AUTH_RESPONSE replayed on a new connection is refused (the nonce and share changed)")
    func replay() throws {
        let source = try SourceUnderTest()
        // An eavesdropper records a real destination's HELLO and AUTH_RESPONSE...
        let recorded = FrameChannel(try TCPSocket.connect(source.endpoint))
        var client = try ClientAuthenticator(key: TestKeys.key)
        let hello = client.hello(Hello(features: [.checksums], clientName: "victim"))
        try recorded.send(.hello(hello))
        guard case .message(.authChallenge(let nonce, let share)) = try recorded.receive() else { Issue.record("no challenge"); return }
        let response = try client.respond(challengeNonce: nonce, share: share, resumeToken: Self.zeros)
        try recorded.send(response)
        guard case .message(.welcome) = try recorded.receive() else { Issue.record("the real destination was refused"); return }
        // ...and plays them back to the source.
        let replayed = FrameChannel(try TCPSocket.connect(source.endpoint))
        try replayed.send(.hello(hello))
        guard case .message(.authChallenge(let again, _)) = try replayed.receive() else { Issue.record("no challenge"); return }
        #expect(again != nonce, "a fresh nonce per connection")
        try replayed.send(response)
        expectRefusal(replayed, "did not verify")
        try recorded.send(.goodbye)
    }

    @Test("resuming a session that does not exist fails like a wrong key")
    func resumeGuess() throws {
        let source = try SourceUnderTest()
        let channel = FrameChannel(try TCPSocket.connect(source.endpoint))
        var client = try ClientAuthenticator(key: TestKeys.key)
        try channel.send(.hello(client.hello(Hello(features: [.resume], resumeSession: 0x1234_5678, clientName: "x"))))
        guard case .message(.authChallenge(let nonce, let share)) = try channel.receive() else { Issue.record("no challenge"); return }
        try channel.send(try client.respond(challengeNonce: nonce, share: share, resumeToken: Self.zeros))
        expectRefusal(channel, "no longer exists")
    }

    @Test("a destination with the key refuses a source without one, and the other way round")
    func mismatchedModes() throws {
        let insecure = try SourceUnderTest(["--insecure-no-auth"])
        let warnings = insecure.process.output.split(separator: "\n").filter { $0.contains("--insecure-no-auth") && $0.contains("INSECURE") }
        #expect(warnings.count == 1 && warnings[0].contains("anyone who can connect to \(insecure.endpoint)"), "\(insecure.process.output)")
        #expect(throws: ChannelError.self) {
            do { _ = try DestinationClient(source: insecure.endpoint, clientName: "t", authentication: TestKeys.authentication) } catch {
                #expect("\(error)".contains("without authenticating itself"), "\(error)")
                throw error
            }
        }
        let open = try DestinationClient(source: insecure.endpoint, clientName: "t", authentication: .insecureNone)
        #expect(!open.features.contains(.authentication))
        open.close()

        let keyed = try SourceUnderTest()
        #expect(throws: ChannelError.self) {
            do { _ = try DestinationClient(source: keyed.endpoint, clientName: "t", authentication: .insecureNone) } catch {
                #expect("\(error)".contains("authentication-failed") && "\(error)".contains("--key-file"), "\(error)")
                throw error
            }
        }
        let client = try DestinationClient(source: keyed.endpoint, clientName: "t", authentication: TestKeys.authentication)
        #expect(client.features.contains(.authentication))
        client.close()
    }

    @Test("a key rotation: a source with the new and the old key accepts both")
    func rotation() throws {
        let scratch = Scratch()
        let old = TestKeys.key, new = try Self.randomKey("pager-next")
        let both = scratch.file("both.psk")
        try writeNewSecretFile(both, contents: KeyRing.formatted([new, old]))
        let source = try SourceUnderTest(["--key-file", both])
        for key in [old, new] {
            let client = try DestinationClient(source: source.endpoint, clientName: "t", authentication: .keys(try KeyRing(keys: [key])))
            #expect(client.regions.count == 1)
            client.close()
        }
    }

    @Test("a man in the middle that changes a REGION's length is caught by AUTH_CONFIRM")
    func announcementTampering() throws {
        let source = try SourceUnderTest()
        let proxy = try RewritingProxy(upstream: source.endpoint) { message in
            guard case .region(var r) = message else { return message }
            r.length *= 2
            return .region(r)
        }
        #expect(throws: ChannelError.self) {
            do { _ = try DestinationClient(source: proxy.endpoint, clientName: "t", authentication: TestKeys.authentication) } catch {
                #expect("\(error)".contains("AUTH_CONFIRM did not verify"), "\(error)")
                throw error
            }
        }
        // The untouched path through the same proxy works: the failure was the change.
        let honest = try RewritingProxy(upstream: source.endpoint) { $0 }
        let client = try DestinationClient(source: honest.endpoint, clientName: "t", authentication: TestKeys.authentication)
        #expect(client.regions.first?.length == 4 << 20)
        client.close()
    }
}

/// A man in the middle: relays every frame between a client and `upstream`, passing the
/// upstream's messages through `rewrite` (frames from the client go through unchanged).
final class RewritingProxy: @unchecked Sendable {
    let listener: TCPListener
    private var threads: [KernelThread] = []

    init(upstream: Endpoint, rewrite: @escaping @Sendable (Message) -> Message) throws {
        listener = try TCPListener(Endpoint(host: "127.0.0.1", port: 0))
        threads.append(try KernelThread(name: "mitm-accept") { [listener] in
            var relays: [KernelThread] = []
            while let socket = try? listener.accept() {
                guard let up = try? TCPSocket.connect(upstream) else { socket.shutdown(); continue }
                let client = FrameChannel(socket), server = FrameChannel(up)
                func relay(_ from: FrameChannel, _ to: FrameChannel, _ change: @escaping @Sendable (Message) -> Message) -> KernelThread? {
                    try? KernelThread(name: "mitm-relay") {
                        while case .message(let m)? = try? from.receive() { if (try? to.send(change(m))) == nil { break } }
                        from.shutdown()
                        to.shutdown()
                    }
                }
                relays += [relay(client, server, { $0 }), relay(server, client, rewrite)].compactMap { $0 }
            }
            relays.forEach { $0.join() }
        })
    }

    var endpoint: Endpoint { listener.endpoint }

    deinit {
        listener.shutdown()
        threads.forEach { $0.join() }
    }
}
