import CCrypto

/// Whether `a` and `b` hold the same bytes, in time that depends on their length only
/// (`CRYPTO_memcmp`); false on different lengths.
public func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    // The lengths of a tag or a MAC are public, so comparing them first leaks nothing.
    guard a.count == b.count else { return false }
    guard !a.isEmpty else { return true }
    // SAFETY: both buffers hold `a.count` bytes and are borrowed for the call.
    return a.withUnsafeBytes { a in
        b.withUnsafeBytes { b in CRYPTO_memcmp(a.baseAddress, b.baseAddress, a.count) == 0 }
    }
}

/// Overwrites `bytes` with zeros in a way the compiler cannot drop (`OPENSSL_cleanse`); the count
/// stays. Only this variable's storage is wiped: a copy that shared it is unshared first and
/// keeps the secret, so wipe every copy or make none.
public func wipe(_ bytes: inout [UInt8]) {
    // SAFETY: the cleanse writes exactly the buffer's `count` bytes.
    bytes.withUnsafeMutableBytes { buffer in
        guard let base = buffer.baseAddress else { return }
        OPENSSL_cleanse(base, buffer.count)
    }
}
