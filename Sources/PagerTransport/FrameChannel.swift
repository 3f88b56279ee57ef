import PagerKernel
import PagerWire

/// Why a channel stopped.
public enum ChannelError: Error, CustomStringConvertible, Sendable {
    /// The peer closed the connection between frames.
    case closed(peer: String)
    /// The peer sent bytes that are not a valid frame.
    case malformed(peer: String, WireError)
    /// A system call failed (including a peer that vanished mid-frame).
    case kernel(KernelError)
    /// A page's CRC-32C did not match its data: the page was not installed.
    case checksumMismatch(peer: String, region: UInt32, offset: UInt64)
    /// The peer sent an ERROR that ends the session.
    case peerError(peer: String, ProtocolError)
    /// The peer sent a valid frame that makes no sense here.
    case unexpected(peer: String, String)

    public var description: String {
        switch self {
        case .closed(let p): "\(p) closed the connection"
        case .malformed(let p, let e): "malformed frame from \(p): \(e)"
        case .kernel(let e): "\(e)"
        case .checksumMismatch(let p, let r, let o): "page at region \(r) offset \(hex(o)) from \(p) failed its CRC-32C check"
        case .peerError(let p, let e): "\(p) reported \(e.code): \(e.message)"
        case .unexpected(let p, let s): "unexpected from \(p): \(s)"
        }
    }
}

/// What ``FrameChannel/receive()`` returns.
public enum Incoming {
    /// Any message except PAGE_DATA.
    case message(Message)
    /// PAGE_DATA: the header and, for the raw encoding, the page bytes in the channel's
    /// page-aligned buffer (valid until the next `receive`). Checksums, if sent, were verified.
    case pageData(PageDataHeader, UnsafeRawBufferPointer)
}

/// Frames over one TCP connection. One thread receives; sends may come from one other
/// thread (the socket serialises each `sendmsg`, and every frame is one `sendmsg`).
public final class FrameChannel: @unchecked Sendable {
    public let socket: TCPSocket
    /// Largest payload the peer accepts from us / we accept from it.
    public var sendLimit: UInt32 = WireLimits.absoluteMaxPayload
    public var receiveLimit: UInt32 = WireLimits.absoluteMaxPayload
    /// Verify CRC-32C of incoming pages when present.
    public var verifyChecksums = true
    private let pageBuffer: UnsafeMutableRawPointer
    private static let pageBufferSize = Int(WireLimits.absoluteMaxPayload)
    private var payload: [UInt8] = []
    /// Bytes received ahead of the frame being parsed: one `recv` usually brings a whole
    /// small frame (a 4 KiB reply is 4168 bytes), instead of one `recv` per part.
    private let rx: UnsafeMutableRawPointer
    private static let rxSize = 64 << 10
    private var rxStart = 0, rxEnd = 0

    public init(_ socket: TCPSocket) {
        self.socket = socket
        // 2 MiB alignment so a received huge page can be installed straight from the buffer.
        pageBuffer = .allocate(byteCount: FrameChannel.pageBufferSize, alignment: hugePageSize)
        rx = .allocate(byteCount: FrameChannel.rxSize, alignment: 64)
    }

    deinit {
        pageBuffer.deallocate()
        rx.deallocate()
    }

    public var peer: String { socket.peer }

    // MARK: Sending

    public func send(_ message: Message) throws(ChannelError) {
        let bytes = message.encoded()
        try mapErrors { try bytes.withUnsafeBytes { try socket.writeAll([$0]) } }
    }

    /// Sends PAGE_DATA whose bytes are `data` (raw encoding) or nothing (zero encoding),
    /// with one `sendmsg` and no copy of the page bytes.
    public func sendPageData(_ header: PageDataHeader, checksums: [UInt32]? = nil, data: UnsafeRawBufferPointer?) throws(ChannelError) {
        var h = header
        if checksums != nil { h.flags.insert(.checksums) } else { h.flags.remove(.checksums) }
        let sums = (checksums ?? []).flatMap { c in [UInt8(c >> 24), UInt8(truncatingIfNeeded: c >> 16), UInt8(truncatingIfNeeded: c >> 8), UInt8(truncatingIfNeeded: c)] }
        let dataCount = h.encoding == .raw ? Int(h.length) : 0
        precondition(h.encoding != .raw || data?.count == dataCount, "raw PAGE_DATA needs exactly length bytes")
        let payloadLength = PageDataHeader.size + sums.count + dataCount
        precondition(h.encoding != .raw || payloadLength <= Int(sendLimit), "PAGE_DATA larger than the peer accepts")
        let body = dataCount > 0 ? data! : UnsafeRawBufferPointer(start: nil, count: 0)
        try mapErrors {
            try withUnsafeTemporaryAllocation(byteCount: FrameHeader.size + PageDataHeader.size, alignment: 8) { head in
                h.encodeFrameHeader(into: head.baseAddress!, payloadLength: payloadLength)
                try sums.withUnsafeBytes { try socket.writeAll([UnsafeRawBufferPointer(head), $0, body]) }
            }
        }
    }

    // MARK: Receiving

    /// Blocks until one whole frame has arrived and returns it.
    public func receive() throws(ChannelError) -> Incoming {
        try mapErrors { try receiveFrame() }
    }

    /// Runs `body`, turning whatever it throws into a ``ChannelError``.
    private func mapErrors<T>(_ body: () throws -> T) throws(ChannelError) -> T {
        do {
            return try body()
        } catch let error as ChannelError {
            throw error
        } catch let error as KernelError {
            throw .kernel(error)
        } catch let error as WireError {
            throw .malformed(peer: peer, error)
        } catch {
            throw .unexpected(peer: peer, "\(error)")
        }
    }

    /// Reads exactly `n` bytes into `p`: what is buffered first; a short rest (a frame's
    /// header) through the buffer with one `recv` of whatever has arrived; a long rest (page
    /// data) straight into `p`.
    private func readExactly(_ p: UnsafeMutableRawPointer, _ n: Int, betweenFrames: Bool = false) throws -> Void {
        guard n > 0 else { return }
        var done = min(n, rxEnd - rxStart)
        if done > 0 {
            p.copyMemory(from: rx + rxStart, byteCount: done)
            rxStart += done
        }
        if rxStart == rxEnd { rxStart = 0; rxEnd = 0 }
        while done < n {
            let rest = n - done
            if rest >= FrameChannel.rxSize / 2 {
                if try !socket.readExactly(into: p + done, count: rest) {
                    if betweenFrames && done == 0 { throw ChannelError.closed(peer: peer) }
                    throw KernelError("recv", .connectionReset, detail: "\(peer) closed the connection in the middle of a frame")
                }
                return
            }
            // The buffer is empty here: fill it with what has arrived, take what is needed.
            let got = try socket.readSome(into: rx, count: FrameChannel.rxSize)
            if got == 0 {
                if betweenFrames && done == 0 { throw ChannelError.closed(peer: peer) }
                throw KernelError("recv", .connectionReset, detail: "\(peer) closed the connection in the middle of a frame")
            }
            rxEnd = got
            let take = min(rest, got)
            (p + done).copyMemory(from: rx, byteCount: take)
            rxStart = take
            done += take
            if rxStart == rxEnd { rxStart = 0; rxEnd = 0 }
        }
    }

    private func receiveFrame() throws -> Incoming {
        var headerBytes: (UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0) // 40 bytes
        return try withUnsafeMutableBytes(of: &headerBytes) { head in
            try readExactly(head.baseAddress!, FrameHeader.size, betweenFrames: true)
            let header = try FrameHeader.decode(UnsafeRawBufferPointer(head), maxPayload: receiveLimit)
            if header.type == .pageData && header.length >= UInt32(PageDataHeader.size) {
                let fixed = head.baseAddress! + FrameHeader.size
                try readExactly(fixed, PageDataHeader.size)
                var reader = ByteReader(UnsafeRawBufferPointer(start: fixed, count: PageDataHeader.size), context: .pageData)
                let pd = try PageDataHeader.decode(&reader, flags: header.flags)
                let rest = Int(header.length) - PageDataHeader.size
                let sumBytes = 4 * pd.checksumCount
                let dataBytes = pd.encoding == .raw ? Int(pd.length) : (pd.encoding == .zero ? 0 : rest - sumBytes)
                guard rest == sumBytes + dataBytes, pd.encoding != .compressed else {
                    // Let the full decoder name what is wrong.
                    payload = [UInt8](repeating: 0, count: rest)
                    try payload.withUnsafeMutableBytes { try readExactly($0.baseAddress!, rest) }
                    var all = Array(UnsafeRawBufferPointer(start: fixed, count: PageDataHeader.size)) + payload
                    _ = try all.withUnsafeMutableBytes { try Message.decode(header: header, payload: UnsafeRawBufferPointer($0)) }
                    throw ChannelError.unexpected(peer: peer, "PAGE_DATA encoding \(pd.encoding) is not supported")
                }
                var sums: [UInt32] = []
                if sumBytes > 0 {
                    var raw = [UInt8](repeating: 0, count: sumBytes)
                    try raw.withUnsafeMutableBytes { try readExactly($0.baseAddress!, sumBytes) }
                    sums = raw.withUnsafeBytes { r in
                        (0..<sumBytes / 4).map { UInt32(bigEndian: r.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) }
                    }
                }
                try readExactly(pageBuffer, dataBytes)
                let data = UnsafeRawBufferPointer(start: pageBuffer, count: dataBytes)
                if verifyChecksums && !sums.isEmpty {
                    for (i, expected) in sums.enumerated() {
                        let page = UnsafeRawBufferPointer(rebasing: data[i * 4096..<(i + 1) * 4096])
                        if CRC32C.checksum(page) != expected {
                            throw ChannelError.checksumMismatch(peer: peer, region: pd.region, offset: pd.offset + UInt64(i * 4096))
                        }
                    }
                }
                return .pageData(pd, data)
            }
            payload = [UInt8](repeating: 0, count: Int(header.length))
            try payload.withUnsafeMutableBytes { try readExactly($0.baseAddress!, $0.count) }
            let message = try payload.withUnsafeBytes { try Message.decode(header: header, payload: $0) }
            if case .error(let e) = message, e.requestID == 0 { throw ChannelError.peerError(peer: peer, e) }
            return .message(message)
        }
    }
}
