import CCrypto

/// HMAC-SHA256 (RFC 2104, `EVP_MAC` "HMAC" with digest SHA256).
public enum HMACSHA256 {
    /// The 32-byte HMAC-SHA256 of the concatenation of `parts` under `key`
    /// (`EVP_MAC_init`, `EVP_MAC_update` per part, `EVP_MAC_final`).
    public static func authenticationCode(key: [UInt8], parts: [[UInt8]]) -> [UInt8] {
        guard let context = EVP_MAC_CTX_new(Algorithms.hmac) else { libcryptoFailure("EVP_MAC_CTX_new") }
        // EVP_MAC_CTX_free cleanses the key copy the HMAC context holds.
        defer { EVP_MAC_CTX_free(context) }
        // SAFETY: libcrypto copies `key.count` bytes from a pointer valid for the call.
        let initialised = key.withUnsafeBufferPointer {
            pager_hmac_sha256_init(context, $0.baseAddress, $0.count)
        }
        guard initialised == 1 else { libcryptoFailure("HMAC-SHA256 init") }
        for part in parts where !part.isEmpty {
            // SAFETY: read for `part.count` bytes while `part` is borrowed.
            let updated = part.withUnsafeBufferPointer { EVP_MAC_update(context, $0.baseAddress, $0.count) }
            guard updated == 1 else { libcryptoFailure("HMAC-SHA256 update") }
        }
        var code = [UInt8](repeating: 0, count: SHA256.byteCount)
        var length = 0
        // SAFETY: EVP_MAC_final writes at most `code.count` bytes, the size passed.
        let finished = code.withUnsafeMutableBufferPointer {
            EVP_MAC_final(context, $0.baseAddress, &length, $0.count)
        }
        guard finished == 1, length == SHA256.byteCount else { libcryptoFailure("HMAC-SHA256 final") }
        return code
    }
}
