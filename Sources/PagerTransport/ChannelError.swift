import PagerKernel
import PagerTrust
import PagerWire

/// Why a connection stopped.
public enum ChannelError: Error, CustomStringConvertible, Sendable {
    /// The peer closed the connection between frames.
    case closed(peer: String)
    /// The peer closed the connection inside a frame: `received` of its `expected` bytes
    /// (header included) had arrived. `frame` is nil when the header itself was cut short
    /// (then `expected` is the header's 8 bytes).
    case truncated(peer: String, frame: MessageType?, received: Int, expected: Int)
    /// The peer sent bytes that are not a valid frame.
    case malformed(peer: String, WireError)
    /// A system call failed.
    case kernel(KernelError)
    /// A page's CRC-32C did not match its data: the page was not installed.
    case checksumMismatch(peer: String, region: UInt32, offset: UInt64)
    /// The peer sent an ERROR that ends the session.
    case peerError(peer: String, ProtocolError)
    /// The peer sent a valid frame that makes no sense here.
    case unexpected(peer: String, String)
    /// The handshake's authentication failed on this side (the peer's failures arrive as
    /// ``peerError(peer:_:)`` with code `authentication-failed`).
    case authentication(peer: String, AuthenticationError)
    /// A sealed frame (feature `encryption`) failed to open: nothing of it was used, and the
    /// session ends.
    case sealedRecordRejected(peer: String, type: MessageType?, reason: String)
    /// No whole frame (`waitedFor` names the one expected, e.g. "HELLO") had arrived from the
    /// peer when `deadline` passed: it sent nothing, or too slowly.
    case deadline(peer: String, waitedFor: String, Deadline)

    public var description: String {
        switch self {
        case .closed(let p): "\(p) closed the connection"
        case .truncated(let p, let frame?, let received, let expected):
            "\(p) closed the connection inside a \(frame) frame, after \(received) of its \(expected) bytes"
        case .truncated(let p, nil, let received, let expected):
            "\(p) closed the connection inside a frame header, after \(received) of its \(expected) bytes"
        case .malformed(let p, let e): "malformed frame from \(p): \(e)"
        case .kernel(let e): "\(e)"
        case .checksumMismatch(let p, let r, let o): "page at region \(r) offset \(hex(o)) from \(p) failed its CRC-32C check"
        case .peerError(let p, let e): "\(p) reported \(e.code): \(e.message)"
        case .unexpected(let p, let s): "unexpected from \(p): \(s)"
        case .authentication(let p, let e): "authentication with \(p) failed: \(e)"
        case .sealedRecordRejected(let p, let type, let reason):
            "sealed \(type.map { "\($0)" } ?? "frame") from \(p) refused: \(reason)"
        case .deadline(let p, let what, let d): "\(p) sent no complete \(what) within \(d.allowedDescription)"
        }
    }
}

extension ChannelError {
    /// The connection itself failed (closed, reset, cut mid-frame, timed out): the network
    /// or the peer's process, not what it said. A session survives these by resuming (§6);
    /// anything else (a malformed or refused frame, a failed authentication) ends it.
    public var isConnectionLoss: Bool {
        switch self {
        case .closed, .truncated, .kernel, .deadline: true
        default: false
        }
    }
}

/// What ``FrameConnection/receive()`` returns.
public enum Incoming {
    /// Any message except PAGE_DATA.
    case message(Message)
    /// PAGE_DATA: the header and, for the raw encoding, the page bytes in the connection's
    /// page-aligned buffer (valid until the next `receive`). Checksums, if sent, were verified.
    case pageData(PageDataHeader, UnsafeRawBufferPointer)
}

extension Incoming {
    /// The frame's type name, for messages about an unexpected frame.
    public var typeName: String {
        switch self {
        case .message(let m): m.type.description
        case .pageData: MessageType.pageData.description
        }
    }
}
