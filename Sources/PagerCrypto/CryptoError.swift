import CCrypto

/// A libcrypto call that failed, with the reason from `ERR_get_error` and `ERR_error_string_n`.
public struct CryptoError: Error, CustomStringConvertible, Sendable {
    /// What was being done, in words ("X25519 shared secret", "AES-256-GCM key").
    public let operation: String
    /// Why it failed: libcrypto's error string, or this module's own reason.
    public let detail: String

    /// An error with a reason of this module's own (a wrong key length), not from libcrypto.
    public init(operation: String, detail: String) {
        self.operation = operation
        self.detail = detail
    }

    /// The `operation: detail` line.
    public var description: String { "\(operation): \(detail)" }

    /// The oldest error on this thread's libcrypto error queue (`ERR_get_error`), read right
    /// after the call that failed; the rest of the queue is cleared (`ERR_clear_error`) so that
    /// a later failure does not report this one's leftovers.
    static func fromQueue(_ operation: String) -> CryptoError {
        let code = ERR_get_error()
        ERR_clear_error()
        guard code != 0 else {
            return CryptoError(operation: operation, detail: "libcrypto reported no error")
        }
        // ERR_error_string_n's documented minimum is 256 bytes; it always NUL-terminates.
        var text = [CChar](repeating: 0, count: 256)
        // SAFETY: the buffer is `text.count` bytes and ERR_error_string_n writes at most that many.
        text.withUnsafeMutableBufferPointer { ERR_error_string_n(code, $0.baseAddress, $0.count) }
        let length = text.firstIndex(of: 0) ?? text.count
        let detail = String(decoding: text[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return CryptoError(operation: operation, detail: detail)
    }
}

/// AES-GCM open failed (`EVP_DecryptFinal_ex` refused the tag): the record, its additional
/// data, its nonce or its tag was altered, or it was sealed under another key.
public enum AuthenticationFailure: Error, Sendable {
    /// The computed tag differs from the record's.
    case tagMismatch
}

/// Stops the process on a libcrypto failure that can only mean a broken library or no memory
/// (a digest or MAC that cannot be computed): continuing would run on wrong values.
func libcryptoFailure(_ operation: String, file: StaticString = #file, line: UInt = #line) -> Never {
    preconditionFailure(CryptoError.fromQueue(operation).description, file: file, line: line)
}
