import PagerCrypto
import PagerWire

/// The handshake transcript: SHA-256 over the frames of a connection's handshake, each as
/// its exact bytes on the wire (header and payload), in the order sent (Protocols/
/// pager-wire-v1.md §5). Both sides hash the frames as they encode them (`Message.encoded()`):
/// the decoder is lossless for every handshake message, so a received frame re-encodes to the
/// bytes that came in.
///
/// A value type (the hasher is copy-on-write): ``h1(afterResponseFields:)`` digests a copy at
/// the point the client's MAC covers, and hashing goes on to `h2`.
public struct Transcript: Sendable {
    private var hasher = SHA256Hasher()

    public init() {}

    /// Appends one whole frame.
    public mutating func add(_ message: Message) {
        hasher.update(message.encoded())
    }

    /// `h1`: everything so far, then AUTH_RESPONSE's header and its nonce and share (the
    /// frame without its `mac`, which is computed over this hash).
    func h1(afterResponseFields nonce: [UInt8], share: [UInt8]) -> [UInt8] {
        var partial = hasher
        partial.update(Self.responsePrefix(nonce: nonce, share: share))
        return partial.finalized()
    }

    /// `h2`: everything so far (through the last REGION).
    var h2: [UInt8] { hasher.finalized() }

    /// AUTH_RESPONSE's frame header and its first two fields: the bytes `h1` ends with.
    static func responsePrefix(nonce: [UInt8], share: [UInt8]) -> [UInt8] {
        let frame = Message.authResponse(clientNonce: nonce, share: share, mac: [UInt8](repeating: 0, count: 32)).encoded()
        return Array(frame.prefix(FrameHeader.size + 64))
    }
}
