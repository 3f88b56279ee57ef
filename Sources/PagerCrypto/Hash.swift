import CCrypto

/// SHA-256 in one call (`EVP_Digest` with SHA-256).
public enum SHA256 {
    /// The digest's size in bytes (`SHA256_DIGEST_LENGTH`).
    public static let byteCount = 32

    /// The SHA-256 digest of `bytes` (`EVP_Digest`).
    public static func hash(_ bytes: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: byteCount)
        var length: UInt32 = 0
        // SAFETY: `digest` holds byteCount bytes, SHA-256's exact output size; the input pointer
        // is read for `bytes.count` bytes only while `bytes` is borrowed by withUnsafeBytes.
        let ok = bytes.withUnsafeBytes { input in
            digest.withUnsafeMutableBufferPointer { output in
                EVP_Digest(input.baseAddress, input.count, output.baseAddress, &length, Algorithms.sha256, nil)
            }
        }
        guard ok == 1, length == byteCount else { libcryptoFailure("SHA-256") }
        return digest
    }
}

/// Incremental SHA-256 (EVP_MD_CTX), copyable snapshot for transcript hashes.
///
/// A value type: a copy hashes on independently of the original (the context is duplicated with
/// `EVP_MD_CTX_copy_ex` when a shared one is about to change), and `finalized()` digests a
/// duplicate, so a transcript can be hashed at one point and extended afterwards.
public struct SHA256Hasher: @unchecked Sendable {
    // SAFETY (Sendable): the box's context is only mutated while uniquely referenced (copy on
    // write); shared boxes are only read, by EVP_MD_CTX_copy_ex, which does not change its source.
    private var context: DigestContext

    /// A hasher over no bytes yet (`EVP_MD_CTX_new`, `EVP_DigestInit_ex`).
    public init() {
        context = DigestContext()
    }

    /// Hashes `bytes` after everything given so far (`EVP_DigestUpdate`).
    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// Hashes the bytes of `buffer` after everything given so far (`EVP_DigestUpdate`).
    public mutating func update(_ buffer: UnsafeRawBufferPointer) {
        guard !buffer.isEmpty else { return }
        if !isKnownUniquelyReferenced(&context) {
            context = context.duplicate()
        }
        // SAFETY: libcrypto reads `buffer.count` bytes from a pointer valid for the call.
        guard EVP_DigestUpdate(context.pointer, buffer.baseAddress, buffer.count) == 1 else {
            libcryptoFailure("SHA-256 update")
        }
    }

    /// The digest of everything given so far (`EVP_DigestFinal_ex` on an `EVP_MD_CTX_copy_ex`
    /// duplicate); does not consume: hashing can continue.
    public func finalized() -> [UInt8] {
        let snapshot = context.duplicate()
        var digest = [UInt8](repeating: 0, count: SHA256.byteCount)
        var length: UInt32 = 0
        // SAFETY: `digest` holds SHA-256's exact output size.
        let ok = digest.withUnsafeMutableBufferPointer {
            EVP_DigestFinal_ex(snapshot.pointer, $0.baseAddress, &length)
        }
        guard ok == 1, length == SHA256.byteCount else { libcryptoFailure("SHA-256 final") }
        return digest
    }
}

/// The one owner of an EVP_MD_CTX: freed (`EVP_MD_CTX_free`) when the last hasher lets go.
private final class DigestContext {
    let pointer: OpaquePointer

    /// A fresh SHA-256 context (`EVP_MD_CTX_new`, `EVP_DigestInit_ex`).
    init() {
        guard let pointer = EVP_MD_CTX_new() else { libcryptoFailure("EVP_MD_CTX_new") }
        self.pointer = pointer
        guard EVP_DigestInit_ex(pointer, Algorithms.sha256, nil) == 1 else { libcryptoFailure("SHA-256 init") }
    }

    private init(copying source: OpaquePointer) {
        guard let pointer = EVP_MD_CTX_new() else { libcryptoFailure("EVP_MD_CTX_new") }
        self.pointer = pointer
        guard EVP_MD_CTX_copy_ex(pointer, source) == 1 else { libcryptoFailure("SHA-256 copy") }
    }

    /// A second context in the same state (`EVP_MD_CTX_copy_ex`).
    func duplicate() -> DigestContext { DigestContext(copying: pointer) }

    deinit { EVP_MD_CTX_free(pointer) }
}
