import PagerCrypto

/// The handshake's key schedule (a pre-shared key combined with an ephemeral X25519 exchange,
/// as TLS 1.3's psk_dhe_ke): from the key, the shared secret, the session's resume token and
/// the transcript hash `h1`, the two MAC keys and the two traffic keys of one connection.
///
/// Fresh nonces and shares on every connection make every connection's keys different (the
/// demand and push connections of one session never share a key); separate labels per
/// direction stop a MAC or a record from being reflected back to its sender.
public struct HandshakeKeys: Sendable {
    /// Keys the client's AUTH_RESPONSE MAC and the server's AUTH_CONFIRM MAC.
    public let clientMACKey: [UInt8]
    public let serverMACKey: [UInt8]
    /// AES-256-GCM keys of the record layer, one per direction.
    public let clientWriteKey: [UInt8]
    public let serverWriteKey: [UInt8]
    /// Keys the MAC of an RDMA queue pair's connection request (spec §4.15): only the two ends
    /// of this connection can make one.
    public let admissionKey: [UInt8]

    /// Labels of HKDF-Expand (ASCII, no terminator).
    enum Label {
        static let clientMAC = Array("pager-v1 client mac".utf8)
        static let serverMAC = Array("pager-v1 server mac".utf8)
        static let clientWrite = Array("pager-v1 client write".utf8)
        static let serverWrite = Array("pager-v1 server write".utf8)
        static let keyUpdate = Array("pager-v1 key update".utf8)
        static let admission = Array("pager-v1 rdma admission".utf8)
    }

    /// secret = HKDF-Extract(salt: h1, ikm: psk ‖ shared ‖ resumeToken), then one Expand per key.
    /// `resumeToken` is the 16-byte token of the session a connection joins (zeros for a new one).
    public init(presharedKey: [UInt8], sharedSecret: [UInt8], resumeToken: [UInt8], transcriptHash h1: [UInt8]) {
        precondition(resumeToken.count == 16 && h1.count == SHA256.byteCount)
        var secret = HKDFSHA256.extract(salt: h1, inputKeyMaterial: presharedKey + sharedSecret + resumeToken)
        defer { wipe(&secret) }
        clientMACKey = HKDFSHA256.expand(pseudorandomKey: secret, info: Label.clientMAC, count: 32)
        serverMACKey = HKDFSHA256.expand(pseudorandomKey: secret, info: Label.serverMAC, count: 32)
        clientWriteKey = HKDFSHA256.expand(pseudorandomKey: secret, info: Label.clientWrite, count: 32)
        serverWriteKey = HKDFSHA256.expand(pseudorandomKey: secret, info: Label.serverWrite, count: 32)
        admissionKey = HKDFSHA256.expand(pseudorandomKey: secret, info: Label.admission, count: 32)
    }

    /// AUTH_RESPONSE's `mac`: HMAC-SHA256(client MAC key, h1).
    public func clientMAC(transcriptHash h1: [UInt8]) -> [UInt8] {
        HMACSHA256.authenticationCode(key: clientMACKey, parts: [h1])
    }

    /// AUTH_CONFIRM's `mac`: HMAC-SHA256(server MAC key, h2), h2 covering WELCOME and REGION.
    public func serverMAC(transcriptHash h2: [UInt8]) -> [UInt8] {
        HMACSHA256.authenticationCode(key: serverMACKey, parts: [h2])
    }

    /// The record layer's next key for a direction (implicit key update, no message).
    public static func updated(_ key: [UInt8]) -> [UInt8] {
        HKDFSHA256.expand(pseudorandomKey: key, info: Label.keyUpdate, count: 32)
    }
}
