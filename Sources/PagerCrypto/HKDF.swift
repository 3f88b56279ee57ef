import CCrypto

/// HKDF with SHA-256 (RFC 5869), through `EVP_KDF` "HKDF" in its extract-only and expand-only modes.
public enum HKDFSHA256 {
    /// The pseudorandom key HMAC-SHA256(salt, inputKeyMaterial), 32 bytes; an empty salt stands
    /// for 32 zero bytes (`EVP_KDF_derive`, mode `EVP_KDF_HKDF_MODE_EXTRACT_ONLY`).
    public static func extract(salt: [UInt8], inputKeyMaterial: [UInt8]) -> [UInt8] {
        derive(mode: EVP_KDF_HKDF_MODE_EXTRACT_ONLY, salt: salt, key: inputKeyMaterial, info: [], count: SHA256.byteCount)
    }

    /// `count` bytes of output keying material from `pseudorandomKey` and `info`; `count` is at
    /// most 255 × 32 = 8160 (`EVP_KDF_derive`, mode `EVP_KDF_HKDF_MODE_EXPAND_ONLY`).
    public static func expand(pseudorandomKey: [UInt8], info: [UInt8], count: Int) -> [UInt8] {
        // RFC 5869 section 2.3: L <= 255 * HashLen.
        precondition(count > 0 && count <= 255 * SHA256.byteCount, "HKDF-Expand of \(count) bytes")
        return derive(mode: EVP_KDF_HKDF_MODE_EXPAND_ONLY, salt: [], key: pseudorandomKey, info: info, count: count)
    }

    private static func derive(mode: Int32, salt: [UInt8], key: [UInt8], info: [UInt8], count: Int) -> [UInt8] {
        guard let context = EVP_KDF_CTX_new(Algorithms.hkdf) else { libcryptoFailure("EVP_KDF_CTX_new") }
        // EVP_KDF_CTX_free cleanses the key copy the context holds.
        defer { EVP_KDF_CTX_free(context) }
        var output = [UInt8](repeating: 0, count: count)
        // SAFETY: the inputs are read for their counts while borrowed; `output` is written for
        // exactly `count` bytes, the length passed.
        let ok = salt.withUnsafeBufferPointer { salt in
            key.withUnsafeBufferPointer { key in
                info.withUnsafeBufferPointer { info in
                    output.withUnsafeMutableBufferPointer { output in
                        pager_hkdf_sha256(context, mode, salt.baseAddress, salt.count, key.baseAddress, key.count,
                                          info.baseAddress, info.count, output.baseAddress, output.count)
                    }
                }
            }
        }
        guard ok == 1 else { libcryptoFailure(mode == EVP_KDF_HKDF_MODE_EXTRACT_ONLY ? "HKDF-Extract" : "HKDF-Expand") }
        return output
    }
}
