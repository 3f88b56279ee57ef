import CCrypto

/// `count` bytes from libcrypto's cryptographically secure generator (`RAND_bytes`).
///
/// A failure stops the process (`preconditionFailure` with libcrypto's reason): keys and nonces
/// from a generator that cannot seed itself must never be used, and no caller could do better.
public func randomBytes(_ count: Int) -> [UInt8] {
    precondition(count >= 0 && count <= Int(Int32.max), "randomBytes(\(count))")
    var bytes = [UInt8](repeating: 0, count: count)
    guard count > 0 else { return bytes }
    // SAFETY: RAND_bytes writes exactly `count` bytes into a buffer of that size.
    let ok = bytes.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32($0.count)) }
    guard ok == 1 else { libcryptoFailure("RAND_bytes: the random generator failed") }
    return bytes
}
