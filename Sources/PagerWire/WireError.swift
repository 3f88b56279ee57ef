/// Why bytes received are not a valid v1 frame. Every case names the message and field,
/// so a peer that sends garbage gets a precise message back in an ERROR frame.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The header's type is not a v1 message type.
    case unknownMessageType(UInt16)
    /// The header announces a payload larger than the negotiated (or absolute) maximum.
    case frameTooLarge(MessageType, length: UInt32, limit: UInt32)
    /// A message's payload ended before a field.
    case truncatedPayload(MessageType, field: String, needed: Int, length: Int)
    /// Bytes left over after the last field of a fixed-layout message.
    case trailingBytes(MessageType, count: Int)
    /// A reserved field or flag bit is not zero.
    case reservedNotZero(MessageType, field: String)
    /// Flag bits this message does not define are set.
    case unknownFlags(MessageType, flags: UInt16)
    /// A field's value is outside what the protocol allows.
    case fieldOutOfRange(MessageType, field: String, value: UInt64, limit: String)
    /// An offset or length is not a multiple of 4096.
    case misaligned(MessageType, field: String, value: UInt64)
    /// A string is not valid UTF-8.
    case invalidUTF8(MessageType, field: String)
    /// HELLO did not start with the protocol magic: the peer does not speak this protocol.
    case badMagic(UInt32)

    /// The error's name in Protocols/pager-wire-v1.md section 7 and in `vectors/invalid.hex`.
    public var kind: String {
        switch self {
        case .unknownMessageType: "unknown-message-type"
        case .frameTooLarge: "frame-too-large"
        case .truncatedPayload: "truncated-payload"
        case .trailingBytes: "trailing-bytes"
        case .reservedNotZero: "reserved-not-zero"
        case .unknownFlags: "unknown-flags"
        case .fieldOutOfRange: "field-out-of-range"
        case .misaligned: "misaligned"
        case .invalidUTF8: "invalid-utf8"
        case .badMagic: "bad-magic"
        }
    }

    public var description: String {
        switch self {
        case .unknownMessageType(let t): "unknown message type \(hex16(t))"
        case .frameTooLarge(let m, let length, let limit): "\(m) frame announces \(length) payload bytes, limit is \(limit)"
        case .truncatedPayload(let m, let field, let needed, let length):
            "\(m) payload is \(length) bytes, too short for field \(field) (needs \(needed))"
        case .trailingBytes(let m, let count): "\(m) payload has \(count) unexpected trailing bytes"
        case .reservedNotZero(let m, let field): "\(m) reserved field \(field) is not zero"
        case .unknownFlags(let m, let flags): "\(m) has undefined flag bits \(hex16(flags))"
        case .fieldOutOfRange(let m, let field, let value, let limit): "\(m) field \(field) is \(value), must be \(limit)"
        case .misaligned(let m, let field, let value): "\(m) field \(field) \(hex64(value)) is not a multiple of 4096"
        case .invalidUTF8(let m, let field): "\(m) field \(field) is not valid UTF-8"
        case .badMagic(let magic): "HELLO magic is \(hex32(magic)), expected \(hex32(helloMagic)): peer does not speak pager wire protocol"
        }
    }
}

func hex16(_ v: UInt16) -> String { "0x" + String(v, radix: 16) }
func hex32(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }
func hex64(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
