import PagerCrypto
import PagerWire

// The two halves of the handshake's authentication (Protocols/pager-wire-v1.md §5) as pure
// state: they take the frames a connection sends and receives and answer with the frames to
// send, the keys, or the reason to refuse. No sockets here: the source's Handshake.swift and
// the destination's DestinationClient.swift drive them, and the tests drive them with the
// nonces and private keys of the known-answer vectors.
//
//   client                                  server
//   HELLO (authentication, key_identity) ─▶
//                                        ◀─ AUTH_CHALLENGE  server_nonce ‖ server_share
//   AUTH_RESPONSE  client_nonce ‖ client_share ‖ HMAC(client mac key, h1) ─▶
//                                        ◀─ WELCOME, REGION × n   (nothing exists before this)
//                                        ◀─ AUTH_CONFIRM  HMAC(server mac key, h2)

/// Why a handshake's authentication failed. Each description is what the refusing side
/// logs and sends as ERROR `authentication-failed`; none holds a key byte.
public enum AuthenticationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The source has keys; the destination's HELLO did not offer authentication.
    case notOffered
    /// HELLO named a key identity the source's key file does not hold.
    case unknownIdentity(String)
    /// AUTH_RESPONSE's MAC did not verify: another key, a changed HELLO or AUTH_CHALLENGE,
    /// or a resume of a session that does not exist (its token is part of the key).
    case responseMismatch(identity: String, resuming: Bool)
    /// The peer's X25519 share is not a usable public key (a small-order point).
    case invalidShare(String)
    /// The destination has a key; the source sent WELCOME without challenging it.
    case sourceDidNotAuthenticate
    /// The destination has no key; the source challenged it.
    case sourceRequiresAuthentication
    /// AUTH_CONFIRM's MAC did not verify: the source does not hold the key, or a frame it
    /// sent (WELCOME, REGION) changed on the way.
    case confirmationMismatch

    public var description: String {
        switch self {
        case .notOffered:
            "this source requires authentication and the destination offered none (give the destination --key-file with a key of the source's key file)"
        case .unknownIdentity(let identity):
            "the source's key file has no key named \"\(identity)\""
        case .responseMismatch(let identity, let resuming):
            "AUTH_RESPONSE did not verify with the key named \"\(identity)\": the destination holds another key under that name"
                + (resuming ? ", or the session it resumes no longer exists" : "")
        case .invalidShare(let detail):
            "the peer's X25519 share is not a valid public key (\(detail))"
        case .sourceDidNotAuthenticate:
            "the source answered HELLO without authenticating itself (it runs with --insecure-no-auth); this destination has a key and accepts only an authenticated source"
        case .sourceRequiresAuthentication:
            "the source requires authentication (AUTH_CHALLENGE) and this destination has no key: give it --key-file with a key of the source's key file"
        case .confirmationMismatch:
            "the source's AUTH_CONFIRM did not verify: it does not hold the key, or WELCOME or REGION was altered on the way; no page of it is used"
        }
    }
}

/// The destination's side: makes HELLO and AUTH_RESPONSE, and checks AUTH_CONFIRM before
/// anything the source announced (WELCOME, REGION) is used.
public struct ClientAuthenticator: Sendable {
    public let key: PresharedKey
    private let nonce: [UInt8]
    private let keyPair: X25519KeyPair
    private var transcript = Transcript()
    private var derivedKeys: HandshakeKeys?

    /// `nonce` and `privateKey` are fresh random values unless given (known-answer tests).
    public init(key: PresharedKey, nonce: [UInt8]? = nil, privateKey: [UInt8]? = nil) throws(CryptoError) {
        self.key = key
        self.nonce = nonce ?? randomBytes(32)
        keyPair = try makeKeyPair(privateKey)
    }

    /// The HELLO to send: `base` offering authentication, naming the key, and with a zero
    /// resume token (the token is mixed into the keys instead of being sent).
    public mutating func hello(_ base: Hello) -> Hello {
        var hello = base
        hello.features.insert(.authentication)
        hello.keyIdentity = key.identity
        hello.resumeToken = [UInt8](repeating: 0, count: 16)
        transcript.add(.hello(hello))
        return hello
    }

    /// AUTH_RESPONSE to the source's challenge. `resumeToken` is the token of the session this
    /// connection joins (from the demand connection's WELCOME), zeros for a new session.
    public mutating func respond(challengeNonce: [UInt8], share: [UInt8], resumeToken: [UInt8]) throws(AuthenticationError) -> Message {
        transcript.add(.authChallenge(nonce: challengeNonce, share: share))
        let shared: [UInt8]
        do { shared = try keyPair.sharedSecret(peerPublicKey: share) } catch { throw .invalidShare(error.detail) }
        let h1 = transcript.h1(afterResponseFields: nonce, share: keyPair.publicKey)
        let keys = HandshakeKeys(presharedKey: key.secret, sharedSecret: shared, resumeToken: resumeToken, transcriptHash: h1)
        let response = Message.authResponse(clientNonce: nonce, share: keyPair.publicKey, mac: keys.clientMAC(transcriptHash: h1))
        transcript.add(response)
        derivedKeys = keys
        return response
    }

    /// The connection's keys, once ``respond(challengeNonce:share:resumeToken:)`` made them
    /// (used to open the source's sealed frames before AUTH_CONFIRM; trusted once it verifies).
    public var keys: HandshakeKeys? { derivedKeys }

    /// A frame the source sent after AUTH_RESPONSE and before AUTH_CONFIRM (WELCOME, REGION).
    public mutating func received(_ message: Message) {
        transcript.add(message)
    }

    /// Checks AUTH_CONFIRM's MAC; the connection's keys once it verifies.
    public func confirm(mac: [UInt8]) throws(AuthenticationError) -> HandshakeKeys {
        guard let keys = derivedKeys else { throw .confirmationMismatch }
        guard constantTimeEqual(keys.serverMAC(transcriptHash: transcript.h2), mac) else { throw .confirmationMismatch }
        return keys
    }
}

/// The source's side: checks HELLO's offer and key, makes AUTH_CHALLENGE, verifies
/// AUTH_RESPONSE, and makes AUTH_CONFIRM over everything it sent.
public struct ServerAuthenticator: Sendable {
    public let key: PresharedKey
    private let nonce: [UInt8]
    private let keyPair: X25519KeyPair
    private var transcript = Transcript()
    private var verifiedKeys: HandshakeKeys?

    /// Refuses a HELLO that offers no authentication or names a key the ring does not hold.
    /// `nonce` and `privateKey` are fresh random values unless given (known-answer tests).
    public init(ring: KeyRing, hello: Hello, nonce: [UInt8]? = nil, privateKey: [UInt8]? = nil) throws(AuthenticationError) {
        guard hello.features.contains(.authentication) else { throw .notOffered }
        guard let key = ring.key(identity: hello.keyIdentity) else { throw .unknownIdentity(hello.keyIdentity) }
        self.key = key
        self.nonce = nonce ?? randomBytes(32)
        do {
            keyPair = try makeKeyPair(privateKey)
        } catch {
            preconditionFailure("cannot make an X25519 key pair: \(error)")
        }
        transcript.add(.hello(hello))
    }

    /// AUTH_CHALLENGE: this connection's nonce and public share.
    public mutating func challenge() -> Message {
        let message = Message.authChallenge(nonce: nonce, share: keyPair.publicKey)
        transcript.add(message)
        return message
    }

    /// Verifies AUTH_RESPONSE. `resumeToken` is the token of the session the HELLO resumes
    /// (zeros for a new session; a random one when there is no such session, so that the
    /// MAC fails like any other wrong key). Nothing may be created for the peer before this
    /// returns.
    public mutating func verify(clientNonce: [UInt8], share: [UInt8], mac: [UInt8], resumeToken: [UInt8], resuming: Bool) throws(AuthenticationError) {
        let shared: [UInt8]
        do { shared = try keyPair.sharedSecret(peerPublicKey: share) } catch { throw .invalidShare(error.detail) }
        let h1 = transcript.h1(afterResponseFields: clientNonce, share: share)
        let keys = HandshakeKeys(presharedKey: key.secret, sharedSecret: shared, resumeToken: resumeToken, transcriptHash: h1)
        guard constantTimeEqual(keys.clientMAC(transcriptHash: h1), mac) else {
            throw .responseMismatch(identity: key.identity, resuming: resuming)
        }
        transcript.add(.authResponse(clientNonce: clientNonce, share: share, mac: mac))
        verifiedKeys = keys
    }

    /// The connection's keys, once AUTH_RESPONSE verified.
    public var keys: HandshakeKeys? { verifiedKeys }

    /// A frame sent after AUTH_RESPONSE verified and before AUTH_CONFIRM (WELCOME, REGION).
    public mutating func sent(_ message: Message) {
        transcript.add(message)
    }

    /// AUTH_CONFIRM over everything sent and received; the connection's keys.
    public func confirmation() -> (Message, HandshakeKeys) {
        guard let keys = verifiedKeys else { preconditionFailure("AUTH_CONFIRM before AUTH_RESPONSE verified") }
        return (.authConfirm(mac: keys.serverMAC(transcriptHash: transcript.h2)), keys)
    }
}

/// A fresh key pair, or the one of `privateKey` (known-answer tests).
private func makeKeyPair(_ privateKey: [UInt8]?) throws(CryptoError) -> X25519KeyPair {
    if let privateKey { return try X25519KeyPair(privateKey: privateKey) }
    return try X25519KeyPair()
}
