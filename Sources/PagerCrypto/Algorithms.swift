import CCrypto

/// The algorithm objects this module uses, fetched once from libcrypto's default provider.
///
/// OpenSSL 3 looks up an implementation each time a context is initialised with an implicit
/// object such as `EVP_sha256()`; fetching once (`EVP_MD_fetch` and friends) does that lookup at
/// first use only. The objects are never freed: they live as long as the process.
enum Algorithms {
    // SAFETY: fetched algorithm objects are immutable and reference-counted; OpenSSL documents
    // them as safe to share between threads (crypto(7), "Fetching algorithms"), so these
    // constants may be read from any thread even though OpaquePointer is not Sendable.
    nonisolated(unsafe) static let sha256: OpaquePointer = fetched(EVP_MD_fetch(nil, "SHA256", nil), "SHA256")
    nonisolated(unsafe) static let hmac: OpaquePointer = fetched(EVP_MAC_fetch(nil, "HMAC", nil), "HMAC")
    nonisolated(unsafe) static let hkdf: OpaquePointer = fetched(EVP_KDF_fetch(nil, "HKDF", nil), "HKDF")
    nonisolated(unsafe) static let aes256GCM: OpaquePointer = fetched(EVP_CIPHER_fetch(nil, "AES-256-GCM", nil), "AES-256-GCM")

    /// A missing algorithm means a libcrypto without its default provider: nothing here works.
    private static func fetched(_ algorithm: OpaquePointer?, _ name: String) -> OpaquePointer {
        guard let algorithm else { libcryptoFailure("fetching \(name) from libcrypto's default provider") }
        return algorithm
    }
}
