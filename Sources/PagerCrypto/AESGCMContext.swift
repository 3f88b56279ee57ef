import CCrypto

/// The one owner of an AES-256-GCM `EVP_CIPHER_CTX`, shared by the sealer and the opener.
///
/// The context is initialised once with the cipher and key, so the key schedule is computed
/// once; each record then sets only its nonce (`EVP_CipherInit_ex` with no cipher and no key),
/// which costs no allocation and no provider lookup.
final class AESGCMContext {
    /// AES-256 takes a 32-byte key.
    static let keyByteCount = 32
    /// GCM's 96-bit nonce, the length the mode is specified for (SP 800-38D section 5.2.1.1).
    static let nonceByteCount = 12

    let pointer: OpaquePointer
    /// 1 for a sealing context, 0 for an opening one: `EVP_CipherInit_ex`'s `enc`.
    private let encrypting: Int32

    init(key: [UInt8], encrypting: Bool) throws(CryptoError) {
        guard let pointer = EVP_CIPHER_CTX_new() else { throw CryptoError.fromQueue("EVP_CIPHER_CTX_new") }
        self.pointer = pointer
        self.encrypting = encrypting ? 1 : 0
        guard EVP_CipherInit_ex(pointer, Algorithms.aes256GCM, nil, nil, nil, self.encrypting) == 1 else {
            throw CryptoError.fromQueue("AES-256-GCM init")
        }
        try rekey(key)
    }

    /// Replaces the key and its schedule (`EVP_CipherInit_ex` with a key only); the next record
    /// must set its nonce.
    func rekey(_ key: [UInt8]) throws(CryptoError) {
        guard key.count == Self.keyByteCount else {
            throw CryptoError(operation: "AES-256-GCM key", detail: "expected \(Self.keyByteCount) bytes, got \(key.count)")
        }
        // SAFETY: libcrypto reads the 32 key bytes during the call and keeps only its own
        // schedule, which EVP_CIPHER_CTX_free cleanses.
        let ok = key.withUnsafeBufferPointer {
            EVP_CipherInit_ex(pointer, nil, nil, $0.baseAddress, nil, encrypting)
        }
        guard ok == 1 else { throw CryptoError.fromQueue("AES-256-GCM key") }
    }

    /// Starts a record under `nonce` (12 bytes), keeping the key schedule (`EVP_CipherInit_ex`
    /// with an IV only), then authenticates `aad` (`EVP_CipherUpdate` with no output).
    func start(nonce: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer) -> Bool {
        precondition(nonce.count == Self.nonceByteCount, "AES-GCM nonce of \(nonce.count) bytes, expected \(Self.nonceByteCount)")
        // SAFETY: the nonce is read for the context's IV length, 12 (checked above), during the call.
        guard EVP_CipherInit_ex(pointer, nil, nil, nil, nonce.bytes, encrypting) == 1 else { return false }
        guard !aad.isEmpty else { return true }
        var written: Int32 = 0
        // SAFETY: with a NULL output libcrypto only reads `aad.count` bytes of additional data.
        return EVP_CipherUpdate(pointer, nil, &written, aad.bytes, Self.length(aad.count)) == 1
    }

    /// `count` as the Int32 libcrypto's update takes; records are at most a few MiB.
    static func length(_ count: Int) -> Int32 {
        precondition(count <= Int(Int32.max), "AES-GCM update of \(count) bytes")
        return Int32(truncatingIfNeeded: count)
    }

    // EVP_CIPHER_CTX_free frees the provider's context with OPENSSL_clear_free, which cleanses
    // the key schedule; no other copy of the key is kept.
    deinit { EVP_CIPHER_CTX_free(pointer) }
}

/// A 12-byte GCM nonce built on the stack from a record counter: 4 zero bytes, then the counter
/// big-endian. Each direction has its own key, so the counter alone makes the nonce unique.
@inline(__always)
func withCounterNonce<R>(_ counter: UInt64, _ body: (UnsafeRawBufferPointer) -> R) -> R {
    // Three UInt32s have no padding: the tuple is exactly 12 bytes in declaration order.
    var nonce: (UInt32, UInt32, UInt32) = (0, UInt32(truncatingIfNeeded: counter >> 32).bigEndian,
                                           UInt32(truncatingIfNeeded: counter).bigEndian)
    return withUnsafeBytes(of: &nonce) { body($0) }
}

extension UnsafeRawBufferPointer {
    /// The bytes as libcrypto's `const unsigned char *`.
    var bytes: UnsafePointer<UInt8>? {
        // SAFETY: libcrypto reads these as plain bytes; UInt8 may view any memory.
        baseAddress?.assumingMemoryBound(to: UInt8.self)
    }
}
