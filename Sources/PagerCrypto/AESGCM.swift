import CCrypto

/// AES-256-GCM, one EVP_CIPHER_CTX created once and reused for every record (key schedule kept), 12-byte nonce, 16-byte tag.
///
/// Seals records for one direction of a connection. Not for concurrent use: the caller
/// serialises its calls (one sender per direction); `@unchecked Sendable` lets it move to the
/// thread that sends.
public final class AESGCMSealer: @unchecked Sendable {
    /// The tag's size in bytes, GCM's full 128 bits (`EVP_CTRL_GCM_GET_TAG`'s length).
    public static let tagByteCount = 16

    private let context: AESGCMContext

    /// A sealer under a 32-byte key (`EVP_CIPHER_CTX_new`, `EVP_EncryptInit_ex`).
    public init(key: [UInt8]) throws(CryptoError) {
        context = try AESGCMContext(key: key, encrypting: true)
    }

    /// Replaces the key, keeping the context (`EVP_EncryptInit_ex` with a key only).
    public func rekey(_ key: [UInt8]) throws(CryptoError) {
        try context.rekey(key)
    }

    /// Encrypts the concatenation of `parts` into `output` (exactly the parts' total size; may alias nothing), authenticating `aad` too; writes the tag to `tag`.
    ///
    /// `nonce` is 12 bytes; `tag` has room for `tagByteCount` bytes (`EVP_EncryptInit_ex` with
    /// the nonce, `EVP_EncryptUpdate` for the aad and per part, `EVP_EncryptFinal_ex`,
    /// `EVP_CTRL_GCM_GET_TAG`).
    public func seal(nonce: [UInt8], aad: UnsafeRawBufferPointer, parts: [UnsafeRawBufferPointer],
                     into output: UnsafeMutableRawPointer, tag: UnsafeMutableRawPointer) throws(CryptoError) {
        // SAFETY: the nonce's storage is borrowed, not copied, for the call.
        let failure = nonce.withUnsafeBytes { sealRecord(nonce: $0, aad: aad, parts: parts, output: output, tag: tag) }
        if let failure { throw failure }
    }

    /// `seal(nonce:...)` with the nonce 4 zero bytes then `counter` big-endian, built on the stack.
    public func seal(counter: UInt64, aad: UnsafeRawBufferPointer, parts: [UnsafeRawBufferPointer],
                     into output: UnsafeMutableRawPointer, tag: UnsafeMutableRawPointer) throws(CryptoError) {
        let failure = withCounterNonce(counter) { sealRecord(nonce: $0, aad: aad, parts: parts, output: output, tag: tag) }
        if let failure { throw failure }
    }

    /// The record's steps; returns the failure instead of throwing it, so that it can run inside
    /// the nonce's `withUnsafeBytes` scope (a rethrowing closure would lose the error's type).
    private func sealRecord(nonce: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer, parts: [UnsafeRawBufferPointer],
                            output: UnsafeMutableRawPointer, tag: UnsafeMutableRawPointer) -> CryptoError? {
        let ctx = context.pointer
        guard context.start(nonce: nonce, aad: aad) else { return .fromQueue("AES-256-GCM seal: nonce or aad") }
        // SAFETY: the caller gives `output` room for the parts' total size and promises that it
        // overlaps none of them (OpenSSL allows only exact in-place aliasing); GCM is a stream
        // mode, so each update writes exactly its input's length at the running offset.
        let out = output.assumingMemoryBound(to: UInt8.self)
        var offset = 0
        for part in parts where !part.isEmpty {
            var written: Int32 = 0
            guard EVP_EncryptUpdate(ctx, out + offset, &written, part.bytes, AESGCMContext.length(part.count)) == 1,
                  Int(written) == part.count
            else { return .fromQueue("AES-256-GCM seal: update") }
            offset += part.count
        }
        var written: Int32 = 0
        // SAFETY: GCM's final writes no bytes (written is 0); the pointer is the end of the output.
        guard EVP_EncryptFinal_ex(ctx, out + offset, &written) == 1, written == 0 else {
            return .fromQueue("AES-256-GCM seal: final")
        }
        // SAFETY: the caller gives `tag` room for tagByteCount bytes, the length asked for.
        guard EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, Int32(Self.tagByteCount), tag) == 1 else {
            return .fromQueue("AES-256-GCM seal: tag")
        }
        return nil
    }
}

/// AES-256-GCM opening, the other direction of `AESGCMSealer`: one EVP_CIPHER_CTX reused for
/// every record, decrypting in place.
///
/// Not for concurrent use: the caller serialises its calls (one receiver per direction).
public final class AESGCMOpener: @unchecked Sendable {
    private let context: AESGCMContext

    /// An opener under a 32-byte key (`EVP_CIPHER_CTX_new`, `EVP_DecryptInit_ex`).
    public init(key: [UInt8]) throws(CryptoError) {
        context = try AESGCMContext(key: key, encrypting: false)
    }

    /// Replaces the key, keeping the context (`EVP_DecryptInit_ex` with a key only).
    public func rekey(_ key: [UInt8]) throws(CryptoError) {
        try context.rekey(key)
    }

    /// Decrypts `buffer` in place and checks `tag`; on a mismatch throws .tagMismatch and the buffer's content is unspecified (the caller discards it).
    ///
    /// `nonce` is 12 bytes and `tag` exactly `AESGCMSealer.tagByteCount` (a shorter tag would
    /// be a truncated, weaker check, so it stops the process like any other misuse)
    /// (`EVP_DecryptInit_ex`, `EVP_DecryptUpdate`, `EVP_CTRL_GCM_SET_TAG`, `EVP_DecryptFinal_ex`).
    /// A libcrypto failure other than the tag's can only mean a broken library and stops the process.
    public func open(nonce: [UInt8], aad: UnsafeRawBufferPointer, inPlace buffer: UnsafeMutableRawBufferPointer,
                     tag: UnsafeRawBufferPointer) throws(AuthenticationFailure) {
        // SAFETY: the nonce's storage is borrowed, not copied, for the call.
        let authentic = nonce.withUnsafeBytes { openRecord(nonce: $0, aad: aad, buffer: buffer, tag: tag) }
        guard authentic else { throw .tagMismatch }
    }

    /// `open(nonce:...)` with the nonce 4 zero bytes then `counter` big-endian, built on the stack.
    public func open(counter: UInt64, aad: UnsafeRawBufferPointer, inPlace buffer: UnsafeMutableRawBufferPointer,
                     tag: UnsafeRawBufferPointer) throws(AuthenticationFailure) {
        let authentic = withCounterNonce(counter) { openRecord(nonce: $0, aad: aad, buffer: buffer, tag: tag) }
        guard authentic else { throw .tagMismatch }
    }

    /// The record's steps; whether the tag matched.
    private func openRecord(nonce: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer,
                            buffer: UnsafeMutableRawBufferPointer, tag: UnsafeRawBufferPointer) -> Bool {
        precondition(tag.count == AESGCMSealer.tagByteCount, "AES-GCM tag of \(tag.count) bytes, expected \(AESGCMSealer.tagByteCount)")
        let ctx = context.pointer
        guard context.start(nonce: nonce, aad: aad) else { libcryptoFailure("AES-256-GCM open: nonce or aad") }
        if let base = buffer.baseAddress, !buffer.isEmpty {
            let bytes = base.assumingMemoryBound(to: UInt8.self)
            var written: Int32 = 0
            // SAFETY: input and output are the same pointer, the one aliasing OpenSSL allows;
            // GCM writes exactly the input's length.
            guard EVP_DecryptUpdate(ctx, bytes, &written, bytes, AESGCMContext.length(buffer.count)) == 1,
                  Int(written) == buffer.count
            else { libcryptoFailure("AES-256-GCM open: update") }
        }
        // SAFETY: the tag is only read (copied into the context) despite ctrl's mutable pointer.
        guard EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, Int32(tag.count), UnsafeMutableRawPointer(mutating: tag.baseAddress)) == 1 else {
            libcryptoFailure("AES-256-GCM open: tag")
        }
        var written: Int32 = 0
        var scratch: UInt8 = 0
        // SAFETY: GCM's final writes no bytes; `scratch` is a valid address for it all the same.
        guard EVP_DecryptFinal_ex(ctx, &scratch, &written) == 1 else {
            // A mismatch may leave an entry on this thread's error queue; drop it so that it is
            // not reported as the reason for some later, unrelated failure.
            ERR_clear_error()
            return false
        }
        return true
    }
}
