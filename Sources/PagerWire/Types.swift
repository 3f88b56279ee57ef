/// The first four bytes of every HELLO payload: "PGR1".
public let helloMagic: UInt32 = 0x5047_5231

/// Protocol versions this implementation speaks.
public enum ProtocolVersion {
    public static let v1: UInt16 = 1
    public static let supported: ClosedRange<UInt16> = 1...1
}

/// Size limits of protocol v1. Every variable-length field is capped, and a frame's length
/// is checked against the cap before any of its payload is buffered.
public enum WireLimits {
    /// No v1 frame payload is larger: one 2 MiB page plus its fields and checksums.
    public static let absoluteMaxPayload: UInt32 = (2 << 20) + (64 << 10)
    /// A peer may announce a lower maximum in HELLO/WELCOME, but not below this.
    public static let minimumMaxPayload: UInt32 = 64 << 10
    /// What a source accepts before the peer has authenticated (HELLO, AUTH_RESPONSE): a
    /// HELLO is under 200 bytes and an AUTH_RESPONSE 96, so a peer nobody vouched for yet
    /// cannot make a connection buffer more than this.
    public static let preAuthenticationMaxPayload: UInt32 = 1024
    public static let regionNameBytes = 255
    /// The longest range one PUSH_READ names (§4.11a): one 2 MiB page.
    public static let pushReadBytes: UInt32 = 2 << 20
    public static let clientNameBytes = 64
    /// HELLO's `key_identity`: the longest identity a key file may hold (KeyRing's limit).
    public static let keyIdentityBytes = 64
    public static let errorMessageBytes = 1024
    /// Offsets and lengths of pages are multiples of this, whatever the region's page size.
    public static let alignment: UInt64 = 4096
}

/// Message type codes (the header's `type` field).
public enum MessageType: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    case hello = 0x0001
    case welcome = 0x0002
    case authChallenge = 0x0003
    case authResponse = 0x0004
    case authConfirm = 0x0005
    case region = 0x0010
    case pageRequest = 0x0020
    case pageData = 0x0021
    case invalidate = 0x0030
    case invalidateAck = 0x0031
    case switched = 0x0032
    case pushComplete = 0x0040
    case complete = 0x0041
    case completeAck = 0x0042
    case received = 0x0043
    case pushRead = 0x0044
    case ping = 0x0050
    case pong = 0x0051
    case rdmaKey = 0x0060
    case goodbye = 0x007E
    case error = 0x007F

    public var description: String {
        switch self {
        case .hello: "HELLO"
        case .welcome: "WELCOME"
        case .authChallenge: "AUTH_CHALLENGE"
        case .authResponse: "AUTH_RESPONSE"
        case .authConfirm: "AUTH_CONFIRM"
        case .region: "REGION"
        case .pageRequest: "PAGE_REQUEST"
        case .pageData: "PAGE_DATA"
        case .invalidate: "INVALIDATE"
        case .invalidateAck: "INVALIDATE_ACK"
        case .switched: "SWITCHED"
        case .pushComplete: "PUSH_COMPLETE"
        case .complete: "COMPLETE"
        case .completeAck: "COMPLETE_ACK"
        case .received: "RECEIVED"
        case .pushRead: "PUSH_READ"
        case .ping: "PING"
        case .pong: "PONG"
        case .rdmaKey: "RDMA_KEY"
        case .goodbye: "GOODBYE"
        case .error: "ERROR"
        }
    }

    /// The flag bits defined for this message; any other bit set is an error.
    var definedFlags: UInt16 {
        switch self {
        case .pageRequest: PageRequest.Flags.all.rawValue
        case .pageData: PageData.Flags.all.rawValue
        case .received: Received.moreFlag | Received.stagedFlag
        default: 0
        }
    }
}

/// Optional capabilities, offered in HELLO and accepted in WELCOME (a 64-bit mask).
public struct Features: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// PAGE_DATA may carry a CRC32C per 4 KiB page.
    public static let checksums = Features(rawValue: 1 << 0)
    /// PAGE_DATA may use the compressed encoding (reserved: not offered by this version).
    public static let compression = Features(rawValue: 1 << 1)
    /// Mutual authentication with a pre-shared key (AUTH_CHALLENGE, AUTH_RESPONSE, AUTH_CONFIRM).
    public static let authentication = Features(rawValue: 1 << 2)
    /// The session can be resumed after a dropped connection (HELLO resume fields).
    public static let resume = Features(rawValue: 1 << 3)
    /// RDMA_KEY exchange for one-sided reads (reserved: needs the RDMA transport).
    public static let rdma = Features(rawValue: 1 << 4)
    /// The server may send INVALIDATE for pages written after they were sent (pre-copy).
    public static let invalidation = Features(rawValue: 1 << 5)
    /// Regions with 2 MiB pages.
    public static let hugePages = Features(rawValue: 1 << 6)
    /// Every frame after AUTH_RESPONSE sealed with AES-256-GCM (needs ``authentication``).
    public static let encryption = Features(rawValue: 1 << 7)
    /// PAGE_DATA may use the sparse encoding: data and zero pages mixed in one frame.
    public static let sparse = Features(rawValue: 1 << 8)

    public var description: String { hex64(rawValue) }

    /// How a session with these accepted features travels, for logs: "authenticated,
    /// encrypted", "authenticated, not encrypted" or "NOT authenticated".
    public var protectionDescription: String {
        contains(.encryption) ? "authenticated, encrypted" : contains(.authentication) ? "authenticated, not encrypted" : "NOT authenticated"
    }
}

/// A range of bytes in a region: `[offset, offset + length)`.
public struct PageRange: Hashable, Sendable {
    public var offset: UInt64
    public var length: UInt64
    public init(offset: UInt64, length: UInt64) {
        self.offset = offset
        self.length = length
    }
    public var end: UInt64 { offset + length }
}

/// Error codes carried by ERROR frames. Unknown codes are kept, not rejected, so a newer
/// peer's error still reaches the log.
public struct ErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let malformedFrame = ErrorCode(rawValue: 1)
    public static let unsupportedVersion = ErrorCode(rawValue: 2)
    public static let unknownRegion = ErrorCode(rawValue: 3)
    public static let outOfRange = ErrorCode(rawValue: 4)
    public static let misaligned = ErrorCode(rawValue: 5)
    public static let tooLarge = ErrorCode(rawValue: 6)
    public static let authenticationFailed = ErrorCode(rawValue: 7)
    public static let ioError = ErrorCode(rawValue: 8)
    public static let unexpectedMessage = ErrorCode(rawValue: 9)
    public static let shuttingDown = ErrorCode(rawValue: 10)
    public static let internalError = ErrorCode(rawValue: 11)
    public static let timeout = ErrorCode(rawValue: 12)

    public var description: String {
        switch rawValue {
        case 1: "malformed-frame"
        case 2: "unsupported-version"
        case 3: "unknown-region"
        case 4: "out-of-range"
        case 5: "misaligned"
        case 6: "too-large"
        case 7: "authentication-failed"
        case 8: "io-error"
        case 9: "unexpected-message"
        case 10: "shutting-down"
        case 11: "internal-error"
        case 12: "timeout"
        default: "code-\(rawValue)"
        }
    }
}
