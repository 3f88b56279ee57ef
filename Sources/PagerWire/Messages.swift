// The v1 messages as value types. Layouts are specified in Protocols/pager-wire-v1.md;
// each `encode` writes exactly that layout and each `decode` checks every field.

/// HELLO (client to server): the first frame of every connection.
public struct Hello: Equatable, Sendable {
    public var minVersion: UInt16
    public var maxVersion: UInt16
    public var features: Features
    /// As sent (at least 64 KiB): the decoder keeps the value exact so that a re-encoded
    /// HELLO has the bytes the peer sent (the authentication transcript hashes it); use
    /// ``acceptedPayload`` for the limit.
    public var maxPayload: UInt32
    /// Which of the session's connections this is (§6): a new session's is its demand
    /// channel; a resuming HELLO names the one it joins or replaces.
    public var channel: Channel
    /// 0 for a new session; otherwise the session to resume (needs ``Features/resume``).
    public var resumeSession: UInt64
    /// 16 bytes: the token WELCOME gave for `resumeSession`; zeros for a new session, and
    /// zeros with ``Features/authentication`` (the token is then mixed into the key schedule
    /// instead of crossing the wire).
    public var resumeToken: [UInt8]
    public var clientName: String
    /// The identity of the pre-shared key the client authenticates with (a line of its
    /// `keys.psk`); empty without ``Features/authentication``.
    public var keyIdentity: String

    public init(minVersion: UInt16 = ProtocolVersion.v1, maxVersion: UInt16 = ProtocolVersion.v1, features: Features,
                maxPayload: UInt32 = WireLimits.absoluteMaxPayload, channel: Channel = .demand, resumeSession: UInt64 = 0,
                resumeToken: [UInt8] = Array(repeating: 0, count: 16), clientName: String, keyIdentity: String = "") {
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.features = features
        self.maxPayload = maxPayload
        self.channel = channel
        self.resumeSession = resumeSession
        self.resumeToken = resumeToken
        self.clientName = clientName
        self.keyIdentity = keyIdentity
    }

    /// The largest payload the client accepts: values above the absolute maximum mean it.
    public var acceptedPayload: UInt32 { min(maxPayload, WireLimits.absoluteMaxPayload) }

    /// HELLO's `channel` byte: what the connection carries.
    public enum Channel: UInt8, Sendable, CustomStringConvertible {
        /// Demand requests and their replies: a new session's first connection, or (resuming)
        /// the replacement of a lost one.
        case demand = 0
        /// The background push and prefetch: joins a session, or replaces its lost push.
        case push = 1

        public var description: String { self == .demand ? "demand" : "push" }
    }
}

/// WELCOME (server to client): the server's answer to HELLO; `regionCount` REGION frames follow.
public struct Welcome: Equatable, Sendable {
    public var version: UInt16
    public var features: Features
    /// As sent (see ``Hello/maxPayload``); use ``acceptedPayload`` for the limit.
    public var maxPayload: UInt32
    public var regionCount: UInt32
    public var session: UInt64
    /// 16 bytes the client presents to resume this session.
    public var resumeToken: [UInt8]

    public init(version: UInt16 = ProtocolVersion.v1, features: Features, maxPayload: UInt32 = WireLimits.absoluteMaxPayload,
                regionCount: UInt32, session: UInt64, resumeToken: [UInt8] = Array(repeating: 0, count: 16)) {
        self.version = version
        self.features = features
        self.maxPayload = maxPayload
        self.regionCount = regionCount
        self.session = session
        self.resumeToken = resumeToken
    }

    /// The largest payload the server accepts: values above the absolute maximum mean it.
    public var acceptedPayload: UInt32 { min(maxPayload, WireLimits.absoluteMaxPayload) }
}

/// REGION (server to client): one served region of memory.
public struct RegionDescriptor: Equatable, Sendable {
    public var id: UInt32
    /// log2 of the page size: 12 (4 KiB), 21 (2 MiB) or 30 (1 GiB).
    public var pageShift: UInt8
    public var flags: Flags
    public var length: UInt64
    public var name: String

    public struct Flags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The source's copy is still changing: expect INVALIDATE for it (pre-copy).
        public static let live = Flags(rawValue: 1 << 0)
        static let all: Flags = [.live]
    }

    public init(id: UInt32, pageShift: UInt8, flags: Flags = [], length: UInt64, name: String) {
        self.id = id
        self.pageShift = pageShift
        self.flags = flags
        self.length = length
        self.name = name
    }

    public var pageSize: UInt64 { 1 << UInt64(pageShift) }
    static let pageShifts: Set<UInt8> = [12, 21, 30]
}

/// PAGE_REQUEST (client to server): send me these pages.
public struct PageRequest: Equatable, Sendable {
    public var requestID: UInt32
    public var region: UInt32
    public var offset: UInt64
    public var length: UInt64
    public var flags: Flags

    public struct Flags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// A thread is blocked on this page: serve it before any other traffic.
        public static let urgent = Flags(rawValue: 1 << 0)
        /// A hint: these pages will be needed soon (lower priority than urgent, higher than push).
        public static let prefetch = Flags(rawValue: 1 << 1)
        static let all: Flags = [.urgent, .prefetch]
    }

    public init(requestID: UInt32, region: UInt32, offset: UInt64, length: UInt64, flags: Flags) {
        self.requestID = requestID
        self.region = region
        self.offset = offset
        self.length = length
        self.flags = flags
    }
}

/// INVALIDATE (server to client): your copies of these pages are stale; drop them and fetch
/// them again when needed.
public struct Invalidate: Equatable, Sendable {
    public var sequence: UInt32
    public var region: UInt32
    public var ranges: [PageRange]
    public init(sequence: UInt32, region: UInt32, ranges: [PageRange]) {
        self.sequence = sequence
        self.region = region
        self.ranges = ranges
    }
}

/// RECEIVED (client to server, feature `resume`): after a resumed connection, the pages of a
/// region the client holds, so that the push sends again exactly what is missing (§6).
public struct Received: Equatable, Sendable {
    public var region: UInt32
    /// Held byte ranges, ascending and apart (not touching).
    public var ranges: [PageRange]
    /// More RECEIVED frames for this region follow (header flag bit 0); the map is whole
    /// with the frame that does not set it.
    public var more: Bool
    /// The pages are staged pre-copy pages of a live region whose SWITCHED the client has not
    /// received (header flag bit 1): the server must not take them as current (§4.13a).
    public var staged: Bool
    public init(region: UInt32, ranges: [PageRange], more: Bool = false, staged: Bool = false) {
        self.region = region
        self.ranges = ranges
        self.more = more
        self.staged = staged
    }

    /// The header flag that says more frames follow.
    public static let moreFlag: UInt16 = 1
    /// The header flag that says the ranges are staged pre-copy pages.
    public static let stagedFlag: UInt16 = 2
    /// Ranges one frame can carry within `maxPayload` bytes.
    public static func rangesPerFrame(maxPayload: UInt32) -> Int { (Int(maxPayload) - 8) / 16 }

    /// The RECEIVED frames of one region's map: `ranges` as many per frame as `maxPayload`
    /// allows, `more` on all but the last (at least one frame, for an empty map too).
    public static func frames(region: UInt32, ranges: [PageRange], staged: Bool, maxPayload: UInt32) -> [Received] {
        let perFrame = max(1, rangesPerFrame(maxPayload: maxPayload))
        var frames: [Received] = []
        var start = 0
        repeat {
            let end = min(ranges.count, start + perFrame)
            frames.append(Received(region: region, ranges: Array(ranges[start..<end]), more: end < ranges.count, staged: staged))
            start = end
        } while start < ranges.count
        return frames
    }
}

/// ERROR (either direction): the sender ends the session, or fails one request, for this reason.
public struct ProtocolError: Error, Equatable, Sendable {
    public var code: ErrorCode
    /// The request that failed, or 0 when the error ends the session.
    public var requestID: UInt32
    public var message: String
    public init(code: ErrorCode, requestID: UInt32 = 0, message: String) {
        self.code = code
        self.requestID = requestID
        self.message = message
    }
}

/// Every v1 message.
public enum Message: Equatable, Sendable {
    case hello(Hello)
    case welcome(Welcome)
    /// The server's 32-byte nonce and 32-byte X25519 public key.
    case authChallenge(nonce: [UInt8], share: [UInt8])
    /// The client's 32-byte nonce, 32-byte X25519 public key, and its HMAC-SHA256 over the
    /// transcript so far (Protocols/pager-wire-v1.md §5).
    case authResponse(clientNonce: [UInt8], share: [UInt8], mac: [UInt8])
    /// The server's HMAC-SHA256 over the transcript through the last REGION: it knows the
    /// key too, and WELCOME and REGION reached the client unchanged.
    case authConfirm(mac: [UInt8])
    case region(RegionDescriptor)
    case pageRequest(PageRequest)
    case pageData(PageData)
    case invalidate(Invalidate)
    case invalidateAck(sequence: UInt32, region: UInt32)
    case received(Received)
    /// The source's writer is paused and every INVALIDATE up to `lastSequence` is sent: data
    /// for `region` is final from here on (pre-copy has switched to post-copy).
    case switched(region: UInt32, lastSequence: UInt32)
    /// The server has sent every page of `region` (`bytes` in total, zero ranges included).
    case pushComplete(region: UInt32, bytes: UInt64)
    /// The client holds every page of `region` (`Message.allRegions` for all of them).
    case complete(region: UInt32, residentBytes: UInt64)
    case completeAck(region: UInt32)
    case ping(token: UInt64, timestamp: UInt64)
    case pong(token: UInt64, timestamp: UInt64)
    /// The push of `length` bytes of `region` at `offset`, holding data: the client READs them
    /// by its push queue pair (§4.11a, feature ``Features/rdma``); they count as sent.
    case pushRead(region: UInt32, offset: UInt64, length: UInt32)
    /// RDMA memory key for one-sided reads of a region (reserved for ``Features/rdma``).
    case rdmaKey(region: UInt32, rkey: UInt32, address: UInt64, length: UInt64)
    case goodbye
    case error(ProtocolError)

    /// The `region` value of COMPLETE meaning every region.
    public static let allRegions: UInt32 = 0xFFFF_FFFF

    public var type: MessageType {
        switch self {
        case .hello: .hello
        case .welcome: .welcome
        case .authChallenge: .authChallenge
        case .authResponse: .authResponse
        case .authConfirm: .authConfirm
        case .region: .region
        case .pageRequest: .pageRequest
        case .pageData: .pageData
        case .invalidate: .invalidate
        case .invalidateAck: .invalidateAck
        case .received: .received
        case .switched: .switched
        case .pushComplete: .pushComplete
        case .pushRead: .pushRead
        case .complete: .complete
        case .completeAck: .completeAck
        case .ping: .ping
        case .pong: .pong
        case .rdmaKey: .rdmaKey
        case .goodbye: .goodbye
        case .error: .error
        }
    }
}

/// Checks a page range: 4096-aligned, not empty, no overflow past 2^64.
@inline(__always)
func checkRange(_ type: MessageType, offset: UInt64, length: UInt64, field: String = "") throws(WireError) {
    let prefix = field.isEmpty ? "" : field + "."
    if offset % WireLimits.alignment != 0 { throw .misaligned(type, field: prefix + "offset", value: offset) }
    if length % WireLimits.alignment != 0 { throw .misaligned(type, field: prefix + "length", value: length) }
    if length == 0 { throw .fieldOutOfRange(type, field: prefix + "length", value: 0, limit: "greater than 0") }
    if offset > UInt64.max - length {
        throw .fieldOutOfRange(type, field: prefix + "offset+length", value: offset, limit: "at most 2^64 - length")
    }
}
