import PagerCrypto

/// The private data of an RDMA connection request (`rdma_connect`'s `private_data`): which
/// session and channel a queue pair belongs to, proven with a MAC under a key only the two
/// authenticated ends of that session hold. The source accepts a queue pair only with a valid
/// one, once per channel, so no peer that has not authenticated on the TCP session gets a queue
/// pair in the session's protection domain (where its memory registrations live).
///
/// Layout (48 bytes, big-endian, within RDMA CM's 56 bytes for a reliable connection):
///
/// | off | size | field |
/// |---:|---:|---|
/// | 0 | u32 | magic `0x50475244` ("PGRD") |
/// | 4 | u8 | version, 1 |
/// | 5 | u8 | channel: 0 demand, 1 push |
/// | 6 | u16 | reserved, 0 |
/// | 8 | u64 | session id (WELCOME's `session_id`) |
/// | 16 | 16 bytes | nonce, fresh per request |
/// | 32 | 16 bytes | HMAC-SHA256(admission key, label ‖ bytes 0..<32), first 16 bytes |
public struct AdmissionRequest: Sendable, Equatable {
    public static let magic: UInt32 = 0x5047_5244
    public static let version: UInt8 = 1
    public static let byteCount = 48
    static let label = Array("pager-v1 rdma connect".utf8)

    public enum Channel: UInt8, Sendable { case demand = 0, push = 1 }

    public let channel: Channel
    public let session: UInt64
    public let nonce: [UInt8]
    public let mac: [UInt8]

    /// A request for `channel` of `session`, MACed under `key` (a fresh random nonce unless given).
    public init(channel: Channel, session: UInt64, key: [UInt8], nonce: [UInt8] = randomBytes(16)) {
        precondition(nonce.count == 16)
        self.channel = channel
        self.session = session
        self.nonce = nonce
        mac = Self.mac(key: key, header: Self.header(channel: channel, session: session, nonce: nonce))
    }

    private init(channel: Channel, session: UInt64, nonce: [UInt8], mac: [UInt8]) {
        self.channel = channel
        self.session = session
        self.nonce = nonce
        self.mac = mac
    }

    public var bytes: [UInt8] { Self.header(channel: channel, session: session, nonce: nonce) + mac }

    static func header(channel: Channel, session: UInt64, nonce: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(byteCount)
        for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: magic >> UInt32(shift))) }
        out += [version, channel.rawValue, 0, 0]
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: session >> UInt64(shift))) }
        return out + nonce
    }

    static func mac(key: [UInt8], header: [UInt8]) -> [UInt8] {
        Array(HMACSHA256.authenticationCode(key: key, parts: [label, header]).prefix(16))
    }

    /// Parses a request's private data. RDMA CM pads private data with zeros up to what the
    /// transport carries, so bytes after the 48 are allowed only when they are zeros.
    public static func parse(_ data: [UInt8]) throws(AdmissionError) -> AdmissionRequest {
        guard data.count >= byteCount else { throw .malformed("private data is \(data.count) bytes, needs \(byteCount)") }
        if data[byteCount...].contains(where: { $0 != 0 }) { throw .malformed("non-zero bytes after the first \(byteCount) of private data") }
        let magic = data[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        guard magic == Self.magic else { throw .malformed("magic \(hex32(magic)), expected \(hex32(Self.magic)) (not a pager connection)") }
        guard data[4] == version else { throw .unsupportedVersion(data[4]) }
        guard let channel = Channel(rawValue: data[5]) else { throw .malformed("channel \(data[5]) (0 demand, 1 push)") }
        guard data[6] == 0, data[7] == 0 else { throw .malformed("reserved bytes 6-7 are not zero") }
        let session = data[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return AdmissionRequest(channel: channel, session: session, nonce: Array(data[16..<32]), mac: Array(data[32..<48]))
    }

    /// Whether the MAC is right under `key` (constant time).
    public func isAuthentic(key: [UInt8]) -> Bool {
        constantTimeEqual(mac, Self.mac(key: key, header: Self.header(channel: channel, session: session, nonce: nonce)))
    }
}

/// Why an RDMA connection request was refused (sent back as the reject's reason text).
public enum AdmissionError: Error, Sendable, Equatable, CustomStringConvertible {
    case malformed(String)
    case unsupportedVersion(UInt8)
    case unknownSession(UInt64)
    case badMAC(session: UInt64)
    case channelTaken(session: UInt64, channel: AdmissionRequest.Channel)
    case replayed(session: UInt64)

    /// What the peer is told (the reject's private data): the same for a session that does not
    /// exist and a wrong MAC, so that a peer without the key learns nothing about which
    /// sessions exist (as §5 keeps for TCP).
    public var reasonForPeer: String {
        switch self {
        case .unknownSession, .badMAC, .replayed: "not admitted: the request is not from an authenticated session's peer"
        default: description
        }
    }

    public var description: String {
        switch self {
        case .malformed(let what): "malformed RDMA connection request: \(what)"
        case .unsupportedVersion(let v): "RDMA connection request version \(v), this source speaks 1"
        case .unknownSession(let s): "RDMA connection request for session \(s), which this source does not have"
        case .badMAC(let s): "RDMA connection request for session \(s) has a wrong MAC (not from the authenticated peer)"
        case .channelTaken(let s, let c): "session \(s) already has a \(c) queue pair"
        case .replayed(let s): "RDMA connection request for session \(s) repeats an earlier nonce (a replay)"
        }
    }
}

/// The source's side: the sessions that may connect queue pairs, and what each has connected.
/// A channel is taken once per session; a connection lost frees it again (a reconnect after a
/// torn-down queue pair), but a nonce is never accepted twice.
public struct AdmissionGate: Sendable {
    private struct Session: Sendable {
        let key: [UInt8]
        var connected: Set<UInt8> = []
        var nonces: Set<[UInt8]> = []
    }
    private var sessions: [UInt64: Session] = [:]

    public init() {}

    /// A session authenticated on TCP that may now connect queue pairs under `key`.
    public mutating func open(session: UInt64, key: [UInt8]) { sessions[session] = Session(key: key) }
    /// The session ended: no queue pair can join it any more.
    public mutating func close(session: UInt64) { sessions[session] = nil }
    /// The channel's queue pair is gone; a new one may connect.
    public mutating func disconnected(session: UInt64, channel: AdmissionRequest.Channel) {
        sessions[session]?.connected.remove(channel.rawValue)
    }

    /// Checks a connection request's private data and, if it is admitted, records its channel
    /// as connected and its nonce as used.
    public mutating func admit(_ privateData: [UInt8]) throws(AdmissionError) -> AdmissionRequest {
        let request = try AdmissionRequest.parse(privateData)
        guard var session = sessions[request.session] else { throw .unknownSession(request.session) }
        guard request.isAuthentic(key: session.key) else { throw .badMAC(session: request.session) }
        guard !session.nonces.contains(request.nonce) else { throw .replayed(session: request.session) }
        guard !session.connected.contains(request.channel.rawValue) else {
            throw .channelTaken(session: request.session, channel: request.channel)
        }
        session.nonces.insert(request.nonce)
        session.connected.insert(request.channel.rawValue)
        sessions[request.session] = session
        return request
    }
}

private func hex32(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }
