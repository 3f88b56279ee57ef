import Glibc
import PagerCrypto
import PagerWire
import Testing
@testable import PagerTrust

/// One block of Protocols/vectors/handshake.txt: the values of one connection's handshake,
/// computed by Protocols/make_vectors.py (X25519 from RFC 7748, HKDF from RFC 5869).
struct HandshakeVector: CustomTestStringConvertible, Sendable {
    var comment = ""
    var values: [String: [UInt8]] = [:]
    var answers: [[UInt8]] = []
    var testDescription: String { comment }

    subscript(_ name: String) -> [UInt8] {
        guard let v = values[name] else { preconditionFailure("handshake.txt block without \(name)") }
        return v
    }

    func message(_ name: String) throws -> Message { try decodeFrame(self[name]) }
}

func decodeFrame(_ bytes: [UInt8]) throws -> Message {
    var decoder = FrameDecoder()
    decoder.append(bytes)
    guard let m = try decoder.next(), decoder.bufferedBytes == 0 else { throw VectorProblem(text: "not one whole frame") }
    return m
}

struct VectorProblem: Error { var text: String }

func loadHandshakeVectors() throws -> [HandshakeVector] {
    let root = String(#filePath).split(separator: "/").dropLast(3).joined(separator: "/")
    let path = "/" + root + "/Protocols/vectors/handshake.txt"
    guard let file = fopen(path, "r") else { throw VectorProblem(text: "cannot open \(path)") }
    defer { fclose(file) }
    var raw: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while case let n = fread(&chunk, 1, chunk.count, file), n > 0 { raw += chunk[0..<n] }
    var blocks: [HandshakeVector] = []
    var current: HandshakeVector?
    for line in String(decoding: raw, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
        if line.hasPrefix("# ") {
            if current == nil { current = HandshakeVector() }
            current!.comment = String(line.dropFirst(2))
        } else if let colon = line.firstIndex(of: ":"), current != nil {
            let digits = Array(line[line.index(after: colon)...].filter { $0 != " " })
            let bytes = stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
            let name = String(line[..<colon])
            if name == "answer" { current!.answers.append(bytes) } else { current!.values[name] = bytes }
        } else if line.isEmpty, let block = current, !block.values.isEmpty {
            blocks.append(block)
            current = nil
        }
    }
    if let block = current, !block.values.isEmpty { blocks.append(block) }
    return blocks
}

/// The authenticators against the independent encoder's whole handshakes: every frame they
/// make is byte for byte the vector's, and both sides derive the vector's keys.
@Suite struct HandshakeVectorTests {
    static let vectors = (try? loadHandshakeVectors()) ?? []

    @Test func theFileHasBothConnections() throws {
        #expect(try loadHandshakeVectors().count == 2)
    }

    struct Run {
        var client: ClientAuthenticator
        var server: ServerAuthenticator
        var hello: Hello
    }

    /// Both sides through AUTH_RESPONSE, checking each frame against the vector.
    func start(_ v: HandshakeVector) throws -> Run {
        let key = try PresharedKey(identity: String(decoding: v["psk-identity"], as: UTF8.self), secret: v["psk"])
        guard case .hello(let sent) = try v.message("hello") else { throw VectorProblem(text: "hello is not HELLO") }
        var client = try ClientAuthenticator(key: key, nonce: v["client-nonce"], privateKey: v["client-private"])
        let hello = client.hello(Hello(features: sent.features.subtracting(.authentication), maxPayload: sent.maxPayload,
                                       channel: sent.channel, resumeSession: sent.resumeSession, resumeToken: Array(repeating: 0xEE, count: 16),
                                       clientName: sent.clientName))
        #expect(Message.hello(hello).encoded() == v["hello"])
        var server = try ServerAuthenticator(ring: KeyRing(keys: [key]), hello: hello, nonce: v["server-nonce"], privateKey: v["server-private"])
        let challenge = server.challenge()
        #expect(challenge.encoded() == v["auth-challenge"])
        guard case .authChallenge(let nonce, let share) = challenge else { throw VectorProblem(text: "challenge") }
        let response = try client.respond(challengeNonce: nonce, share: share, resumeToken: v["resume-token"])
        #expect(response.encoded() == v["auth-response"])
        return Run(client: client, server: server, hello: hello)
    }

    func verify(_ run: inout Run, _ v: HandshakeVector, resumeToken: [UInt8]? = nil) throws {
        guard case .authResponse(let nonce, let share, let mac) = try v.message("auth-response") else { throw VectorProblem(text: "response") }
        try run.server.verify(clientNonce: nonce, share: share, mac: mac, resumeToken: resumeToken ?? v["resume-token"], resuming: false)
    }

    @Test(arguments: vectors) func bothSidesMakeTheVectorsFramesAndKeys(_ v: HandshakeVector) throws {
        var run = try start(v)
        try verify(&run, v)
        for frame in v.answers {
            let m = try decodeFrame(frame)
            #expect(m.encoded() == frame)
            run.server.sent(m)
            run.client.received(m)
        }
        let (confirm, serverKeys) = run.server.confirmation()
        #expect(confirm.encoded() == v["auth-confirm"])
        guard case .authConfirm(let mac) = confirm else { throw VectorProblem(text: "confirm") }
        let clientKeys = try run.client.confirm(mac: mac)
        for keys in [serverKeys, clientKeys] {
            #expect(keys.clientMACKey == v["client-mac-key"])
            #expect(keys.serverMACKey == v["server-mac-key"])
            #expect(keys.clientWriteKey == v["client-write-key"])
            #expect(keys.serverWriteKey == v["server-write-key"])
            #expect(HandshakeKeys.updated(keys.clientWriteKey) == v["key-update-client-write"])
        }
    }

    @Test(arguments: vectors) func aChangedAnnouncementFailsTheConfirmation(_ v: HandshakeVector) throws {
        // Every byte of every WELCOME and REGION payload, one at a time: a source-side MITM
        // that rewrites a region's length or the session id is caught by AUTH_CONFIRM.
        var base = try start(v)
        try verify(&base, v)
        for m in try v.answers.map(decodeFrame) { base.server.sent(m) }
        let (confirm, _) = base.server.confirmation()
        guard case .authConfirm(let mac) = confirm else { throw VectorProblem(text: "confirm") }
        for (index, frame) in v.answers.enumerated() {
            for byte in FrameHeader.size..<frame.count {
                var changed = frame
                changed[byte] ^= 0x01
                guard let altered = try? decodeFrame(changed) else { continue } // not even a frame
                var client = base.client
                for (j, original) in v.answers.enumerated() { client.received(j == index ? altered : try decodeFrame(original)) }
                #expect(throws: AuthenticationError.confirmationMismatch) { try client.confirm(mac: mac) }
            }
        }
    }

    @Test(arguments: vectors) func aWrongKeyOrTokenOrAChangedHelloFailsTheResponse(_ v: HandshakeVector) throws {
        let right = try PresharedKey(identity: "pager-1", secret: v["psk"])
        var otherSecret = v["psk"]
        otherSecret[0] ^= 0x80
        guard case .hello(let sent) = try v.message("hello") else { throw VectorProblem(text: "hello") }
        /// The server's verdict on a client holding `clientKey`, when the server sees `seen` (a
        /// MITM's edit of the client's HELLO) and resumes with `token`.
        func verdict(clientKey: PresharedKey, seen edit: (inout Hello) -> Void = { _ in }, token: [UInt8]) throws {
            var client = try ClientAuthenticator(key: clientKey, nonce: v["client-nonce"], privateKey: v["client-private"])
            var hello = client.hello(sent)
            edit(&hello)
            var server = try ServerAuthenticator(ring: KeyRing(keys: [right]), hello: hello, nonce: v["server-nonce"], privateKey: v["server-private"])
            guard case .authChallenge(let n, let s) = server.challenge(),
                  case .authResponse(let cn, let cs, let mac) = try client.respond(challengeNonce: n, share: s, resumeToken: v["resume-token"])
            else { throw VectorProblem(text: "handshake") }
            try server.verify(clientNonce: cn, share: cs, mac: mac, resumeToken: token, resuming: true)
        }
        try verdict(clientKey: right, token: v["resume-token"])   // the control: it verifies
        let refused = AuthenticationError.responseMismatch(identity: "pager-1", resuming: true)
        #expect(throws: refused) { try verdict(clientKey: PresharedKey(identity: "pager-1", secret: otherSecret), token: v["resume-token"]) }
        var token = v["resume-token"]
        token[15] ^= 1
        #expect(throws: refused) { try verdict(clientKey: right, token: token) }
        // A downgrade in flight: the features the client offered, stripped of huge pages.
        #expect(throws: refused) { try verdict(clientKey: right, seen: { $0.features.remove(.hugePages) }, token: v["resume-token"]) }
        #expect(throws: refused) { try verdict(clientKey: right, seen: { $0.clientName = "someone else" }, token: v["resume-token"]) }
    }

    @Test func aServerRefusesAHelloWithoutAuthenticationOrWithAnUnknownKey() throws {
        let ring = try KeyRing(keys: [PresharedKey(identity: "pager-1", secret: Array(repeating: 7, count: 32))])
        #expect(throws: AuthenticationError.notOffered) {
            try ServerAuthenticator(ring: ring, hello: Hello(features: [.resume], clientName: "x", keyIdentity: "pager-1"))
        }
        #expect(throws: AuthenticationError.unknownIdentity("pager-2")) {
            try ServerAuthenticator(ring: ring, hello: Hello(features: [.authentication], clientName: "x", keyIdentity: "pager-2"))
        }
    }

    @Test func smallOrderSharesAreRefusedOnBothSides() throws {
        let key = try PresharedKey(identity: "pager-1", secret: Array(repeating: 7, count: 32))
        var client = try ClientAuthenticator(key: key)
        let hello = client.hello(Hello(features: [], clientName: "x"))
        var server = try ServerAuthenticator(ring: KeyRing(keys: [key]), hello: hello)
        _ = server.challenge()
        let zero = [UInt8](repeating: 0, count: 32)   // the identity point: every shared secret is 0
        #expect(throws: AuthenticationError.self) { try client.respond(challengeNonce: zero, share: zero, resumeToken: zero.prefix(16).map { $0 }) }
        #expect(throws: AuthenticationError.self) {
            try server.verify(clientNonce: zero, share: zero, mac: zero, resumeToken: Array(zero.prefix(16)), resuming: false)
        }
    }

    @Test func freshConnectionsNeverShareKeys() throws {
        // Random nonces and shares (the daemons' defaults): two connections with the same key
        // and token get different traffic keys, and no key equals another.
        let key = try PresharedKey(identity: "pager-1", secret: Array(repeating: 9, count: 32))
        var seen: [[UInt8]] = []
        for _ in 0..<2 {
            var client = try ClientAuthenticator(key: key)
            let hello = client.hello(Hello(features: [.resume], clientName: "x"))
            var server = try ServerAuthenticator(ring: KeyRing(keys: [key]), hello: hello)
            guard case .authChallenge(let n, let s) = server.challenge(),
                  case .authResponse(let cn, let cs, let mac) = try client.respond(challengeNonce: n, share: s, resumeToken: Array(repeating: 0, count: 16))
            else { throw VectorProblem(text: "handshake") }
            try server.verify(clientNonce: cn, share: cs, mac: mac, resumeToken: Array(repeating: 0, count: 16), resuming: false)
            let (_, keys) = server.confirmation()
            seen += [keys.clientWriteKey, keys.serverWriteKey, keys.clientMACKey, keys.serverMACKey]
        }
        #expect(Set(seen.map { $0.map(String.init).joined(separator: ",") }).count == seen.count)
    }
}
