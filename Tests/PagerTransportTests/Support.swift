@testable import PagerTransport
import PagerKernel
import PagerWire

/// A loopback TCP connection: `raw` is the peer's bare socket (to write arbitrary bytes),
/// `channel` the FrameChannel under test on the other end.
struct Pair {
    let raw: TCPSocket
    let channel: FrameChannel

    init() throws {
        let listener = try TCPListener(Endpoint(host: "127.0.0.1", port: 0))
        raw = try TCPSocket.connect(listener.endpoint)
        channel = FrameChannel(try listener.accept())
    }

    /// Writes `bytes` from the raw side in pieces of the given sizes (cycled), one `sendmsg`
    /// each: the receiver sees them fragmented at those boundaries or coalesced, never more.
    func write(_ bytes: [UInt8], pieces: [Int]) throws {
        var at = 0, i = 0
        try bytes.withUnsafeBytes { all in
            while at < all.count {
                let n = min(pieces[i % pieces.count], all.count - at)
                try raw.writeAll([UnsafeRawBufferPointer(rebasing: all[at..<at + n])])
                at += n
                i += 1
            }
        }
    }
}

/// A frame as the channel returns it, comparable with what was sent.
enum Received: Equatable, CustomStringConvertible {
    case message(Message)
    case pageData(PageDataHeader, [UInt8])

    /// Short, so a failure does not print megabytes of page bytes.
    var description: String {
        switch self {
        case .message(let m): String("\(m)".prefix(120))
        case .pageData(let h, let data): "PAGE_DATA request=\(h.requestID) offset=\(h.offset) \(data.count) bytes crc=\(data.isEmpty ? 0 : CRC32C.checksum(data))"
        }
    }

    init(_ incoming: Incoming) {
        switch incoming {
        case .message(let m): self = .message(m)
        case .pageData(let h, let data): self = .pageData(h, Array(data))
        }
    }

    /// What the channel should return for `message` (page data without its checksums, which
    /// the channel verifies instead of returning).
    init(sent message: Message) {
        if case .pageData(let d) = message { self = .pageData(d.header, d.data) } else { self = .message(message) }
    }
}

/// Page bytes that say which frame they belong to, so a torn or misplaced frame shows.
func pattern(_ tag: UInt32, pages: Int) -> [UInt8] {
    (0..<pages * 4096).map { UInt8(truncatingIfNeeded: Int(tag) &* 31 &+ $0 &* 7 &+ $0 >> 12) }
}

func checksums(_ data: [UInt8]) -> [UInt32] {
    stride(from: 0, to: data.count, by: 4096).map { CRC32C.checksum(Array(data[$0..<$0 + 4096])) }
}

/// One of each kind of frame the channel returns (no ERROR with request 0, which ends the
/// session, and no compressed PAGE_DATA, which the channel refuses).
func sampleMessages() -> [Message] {
    let one = pattern(1, pages: 1), many = pattern(2, pages: 17)
    return [
        .hello(Hello(features: [], maxPayload: 1 << 20, resumeSession: 0, resumeToken: [UInt8](repeating: 0, count: 16), clientName: "test")),
        .region(RegionDescriptor(id: 3, pageShift: 12, flags: [], length: 1 << 30, name: "ram")),
        .pageRequest(PageRequest(requestID: 7, region: 3, offset: 0x5000, length: 8192, flags: .urgent)),
        .pageData(PageData(requestID: 7, region: 3, offset: 0x5000, length: 4096, flags: .urgent, encoding: .raw, data: one)),
        .pageData(PageData(requestID: 8, region: 3, offset: 0x10000, length: UInt64(many.count), flags: .push, encoding: .raw,
                           checksums: checksums(many), data: many)),
        .pageData(PageData(requestID: 0, region: 3, offset: 0, length: 1 << 30, flags: .push, encoding: .zero, data: [])),
        .invalidate(Invalidate(sequence: 2, region: 3, ranges: (0..<300).map { PageRange(offset: UInt64($0) << 13, length: 4096) })),
        .ping(token: 9, timestamp: 10),
        .error(ProtocolError(code: .ioError, requestID: 7, message: "read failed")),
        .goodbye,
    ]
}
