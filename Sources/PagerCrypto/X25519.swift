import CCrypto

/// An X25519 key pair (RFC 7748, `EVP_PKEY_X25519`) for the handshake's ephemeral key agreement.
public struct X25519KeyPair: Sendable {
    /// X25519 keys and shared secrets are 32 bytes (RFC 7748 section 5).
    public static let byteCount = 32

    /// The public key, the little-endian u-coordinate (`EVP_PKEY_get_raw_public_key`), 32 bytes.
    public let publicKey: [UInt8]
    private let key: OwnedKey

    /// A fresh random key pair (`EVP_PKEY_keygen` on an `EVP_PKEY_X25519` context).
    public init() throws(CryptoError) {
        guard let context = EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, nil) else {
            throw CryptoError.fromQueue("X25519 key generation context")
        }
        defer { EVP_PKEY_CTX_free(context) }
        var generated: OpaquePointer?
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_keygen(context, &generated) == 1, let generated else {
            throw CryptoError.fromQueue("X25519 key generation")
        }
        try self.init(owning: generated)
    }

    /// The key pair of a known 32-byte private key, for known-answer tests
    /// (`EVP_PKEY_new_raw_private_key`); libcrypto clamps the scalar as RFC 7748 says.
    public init(privateKey: [UInt8]) throws(CryptoError) {
        guard privateKey.count == Self.byteCount else {
            throw CryptoError(operation: "X25519 private key", detail: "expected \(Self.byteCount) bytes, got \(privateKey.count)")
        }
        // SAFETY: libcrypto copies the 32 bytes; the pointer is valid for the call.
        let created = privateKey.withUnsafeBufferPointer {
            EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nil, $0.baseAddress, $0.count)
        }
        guard let created else { throw CryptoError.fromQueue("X25519 private key") }
        try self.init(owning: created)
    }

    private init(owning pointer: OpaquePointer) throws(CryptoError) {
        key = OwnedKey(pointer)
        var publicKey = [UInt8](repeating: 0, count: Self.byteCount)
        var length = publicKey.count
        // SAFETY: `length` tells libcrypto the buffer's size; it writes at most that many bytes.
        let ok = publicKey.withUnsafeMutableBufferPointer {
            EVP_PKEY_get_raw_public_key(pointer, $0.baseAddress, &length)
        }
        guard ok == 1, length == Self.byteCount else { throw CryptoError.fromQueue("X25519 public key") }
        self.publicKey = publicKey
    }

    /// X25519(own private key, `peerPublicKey`), 32 bytes (`EVP_PKEY_derive`).
    ///
    /// Throws on a peer key that is not 32 bytes, and on an all-zero result, which a small-order
    /// peer point forces whatever our key is (RFC 7748 section 6.1's check): such a secret would
    /// be known to anyone.
    public func sharedSecret(peerPublicKey: [UInt8]) throws(CryptoError) -> [UInt8] {
        let operation = "X25519 shared secret"
        guard peerPublicKey.count == Self.byteCount else {
            throw CryptoError(operation: operation, detail: "peer public key of \(peerPublicKey.count) bytes, expected \(Self.byteCount)")
        }
        // SAFETY: libcrypto copies the 32 bytes; the pointer is valid for the call.
        let created = peerPublicKey.withUnsafeBufferPointer {
            EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nil, $0.baseAddress, $0.count)
        }
        guard let created else { throw CryptoError.fromQueue("\(operation): peer public key") }
        let peer = OwnedKey(created)
        guard let context = EVP_PKEY_CTX_new(key.pointer, nil) else { throw CryptoError.fromQueue(operation) }
        defer { EVP_PKEY_CTX_free(context) }
        guard EVP_PKEY_derive_init(context) == 1, EVP_PKEY_derive_set_peer(context, peer.pointer) == 1 else {
            throw CryptoError.fromQueue(operation)
        }
        var secret = [UInt8](repeating: 0, count: Self.byteCount)
        var length = secret.count
        // SAFETY: `length` tells libcrypto the buffer's size; it writes at most that many bytes.
        let derived = secret.withUnsafeMutableBufferPointer { EVP_PKEY_derive(context, $0.baseAddress, &length) }
        // OpenSSL 3 already fails EVP_PKEY_derive on an all-zero X25519 output (its reason is
        // only "failed during derivation"); the second check keeps the guarantee here whatever
        // the library version does.
        guard derived == 1, length == Self.byteCount else {
            let reason = CryptoError.fromQueue(operation).detail
            throw CryptoError(operation: operation, detail: "\(reason) (libcrypto refuses a small-order peer public key here)")
        }
        guard !constantTimeEqual(secret, [UInt8](repeating: 0, count: Self.byteCount)) else {
            throw CryptoError(operation: operation, detail: "all-zero result: the peer public key is a small-order point")
        }
        return secret
    }
}

/// The one owner of an EVP_PKEY: `EVP_PKEY_free` (which cleanses the private key) in deinit.
private final class OwnedKey: @unchecked Sendable {
    // SAFETY (Sendable): the key is never changed after creation; OpenSSL allows one EVP_PKEY to
    // be used from several threads at once as long as each has its own EVP_PKEY_CTX, as here.
    let pointer: OpaquePointer

    init(_ pointer: OpaquePointer) { self.pointer = pointer }

    deinit { EVP_PKEY_free(pointer) }
}
