import PagerKernel
import PagerWire

/// Frames over one TCP connection: the TCP ``FrameConnection``.
///
/// Receiving drives the one ``FrameParser``: the parser says how many bytes it needs and
/// where, and this class only gets them there with as few `recv` calls as it can. Sending
/// writes each frame with one `sendmsg` (scatter-gather, no copy of page bytes), under a
/// lock held until the frame is written whole, so frames from several threads never
/// interleave on the wire.
public final class FrameChannel: FrameConnection, @unchecked Sendable {
    public let socket: TCPSocket
    /// Largest payload the peer accepts from us / we accept from it.
    public var sendLimit: UInt32 = WireLimits.absoluteMaxPayload
    public var receiveLimit: UInt32 = WireLimits.absoluteMaxPayload
    /// Verify CRC-32C of incoming pages when present.
    public var verifyChecksums = true

    /// One frame on the wire at a time, short writes completed inside. A ForegroundMutex: the
    /// background (`SCHED_IDLE`) push shares its connection with threads that answer faults,
    /// so a push frame must not stay half-written while a busy host leaves the push unscheduled.
    private let sendLock = ForegroundMutex(())
    /// Caps the bytes offered to one `sendmsg`: tests force short writes with it.
    var maxBytesPerSendCall = Int.max

    // Receive side: touched only by the one receiving thread.
    private var parser = FrameParser()
    /// Where PAGE_DATA's bytes land: 2 MiB-aligned, so that a received huge page can be
    /// installed straight from it. Allocated at the first PAGE_DATA, not in `init`: a
    /// connection that never gets past its handshake (one of a flood) costs no 2 MiB here.
    private(set) var pageBuffer: UnsafeMutableRawPointer?
    private static let pageBufferSize = Int(WireLimits.absoluteMaxPayload)
    /// Bytes received ahead of the part being parsed: one `recv` usually brings a whole
    /// small frame (a 4 KiB reply is 4168 bytes), instead of one `recv` per part.
    private let rx: UnsafeMutableRawPointer
    private static let rxSize = 64 << 10
    private var rxStart = 0, rxEnd = 0
    /// Where a part that is not already whole in `rx` is assembled (grown on demand, at most
    /// the receive limit: a large INVALIDATE, a split header).
    private var scratch: UnsafeMutableRawPointer
    private var scratchSize = 4096
    /// The deadline of the ``receive(deadline:waitingFor:)`` in progress and the frame it
    /// waits for. Nil in ``receive()``: its reads block as long as it takes, with no `poll`
    /// before them, so the page path makes no more system calls than it did.
    private var deadline: (until: Deadline, what: String)?

    public init(_ socket: TCPSocket) {
        self.socket = socket
        rx = .allocate(byteCount: FrameChannel.rxSize, alignment: 64)
        scratch = .allocate(byteCount: scratchSize, alignment: 64)
    }

    deinit {
        pageBuffer?.deallocate()
        rx.deallocate()
        scratch.deallocate()
    }

    public var peer: String { socket.peer }

    /// Shuts the socket down in both directions (`shutdown(SHUT_RDWR)`).
    public func shutdown() { socket.shutdown() }

    // MARK: Sending

    public func send(_ message: Message) throws(ChannelError) {
        let bytes = message.encoded()
        try write { try bytes.withUnsafeBytes { try writeFrame([$0]) } }
    }

    /// Sends PAGE_DATA whose bytes are `data` (raw encoding) or nothing (zero encoding),
    /// with one `sendmsg` and no copy of the page bytes.
    public func sendPageData(_ header: PageDataHeader, checksums: [UInt32]? = nil, data: UnsafeRawBufferPointer?) throws(ChannelError) {
        var h = header
        if checksums != nil { h.flags.insert(.checksums) } else { h.flags.remove(.checksums) }
        let sums = (checksums ?? []).map(\.bigEndian)
        let dataCount = h.encoding == .raw ? Int(h.length) : 0
        precondition(h.encoding != .raw || data?.count == dataCount, "raw PAGE_DATA needs exactly length bytes")
        let payloadLength = PageDataHeader.size + 4 * sums.count + dataCount
        precondition(h.encoding != .raw || payloadLength <= Int(sendLimit), "PAGE_DATA larger than the peer accepts")
        let body = dataCount > 0 ? data! : UnsafeRawBufferPointer(start: nil, count: 0)
        try write {
            try withUnsafeTemporaryAllocation(byteCount: FrameHeader.size + PageDataHeader.size, alignment: 8) { head in
                h.encodeFrameHeader(into: head.baseAddress!, payloadLength: payloadLength)
                try sums.withUnsafeBytes { try writeFrame([UnsafeRawBufferPointer(head), $0, body]) }
            }
        }
    }

    /// Writes one whole frame under the send lock.
    private func writeFrame(_ parts: [UnsafeRawBufferPointer]) throws {
        let cap = maxBytesPerSendCall
        try sendLock.withLock { _ in try socket.writeAll(parts, maxBytesPerCall: cap) }
    }

    /// Runs a send (`withUnsafeBytes` rethrows untyped errors), as a ``ChannelError``.
    private func write(_ body: () throws -> Void) throws(ChannelError) {
        do { try body() } catch let e as KernelError { throw .kernel(e) } catch { preconditionFailure("a send threw \(error)") }
    }

    // MARK: Receiving

    /// Blocks until one whole frame has arrived and returns it.
    public func receive() throws(ChannelError) -> Incoming {
        try receiveFrame()
    }

    /// Receives one frame, `what` by name (for the error), or throws
    /// ``ChannelError/deadline(peer:waitedFor:_:)`` once `deadline` passes before the whole of
    /// it has arrived. The deadline bounds the frame, not each read: every read waits for the
    /// socket to be readable (`poll`) only as long as is left, so a peer that trickles a byte
    /// at a time runs out of time as surely as one that sends nothing.
    public func receive(deadline: Deadline, waitingFor what: String) throws(ChannelError) -> Incoming {
        self.deadline = (deadline, what)
        defer { self.deadline = nil }
        return try receiveFrame()
    }

    /// The frame parser's loop that both receives share.
    private func receiveFrame() throws(ChannelError) -> Incoming {
        parser.maxPayload = receiveLimit
        do {
            while true {
                let event: FrameParser.Event?
                switch parser.need {
                case .bytes(let n) where rxEnd - rxStart >= n:
                    // Usually: the whole part came with an earlier recv; parse it where it is.
                    let part = UnsafeRawBufferPointer(start: rx + rxStart, count: n)
                    rxStart += n
                    if rxStart == rxEnd { rxStart = 0; rxEnd = 0 }
                    event = try parser.parse(part)
                case .bytes(let n):
                    if n > scratchSize { growScratch(n) }
                    try fill(scratch, n)
                    event = try parser.parse(UnsafeRawBufferPointer(start: scratch, count: n))
                case .pageBytes(let n):
                    try fill(pageBuffer ?? allocatePageBuffer(), n)
                    event = parser.pageBytesReceived()
                }
                if let event { return try deliver(event) }
            }
        } catch let e as WireError {
            throw .malformed(peer: peer, e)
        } catch let e as KernelError {
            throw .kernel(e)
        } catch let e as ChannelError {
            throw e
        } catch {
            throw .unexpected(peer: peer, "\(error)")
        }
    }

    /// What a parsed frame means to the caller: verified page data, or a message.
    private func deliver(_ event: FrameParser.Event) throws(ChannelError) -> Incoming {
        switch event {
        case .pageData(let pd, let sums):
            let data = UnsafeRawBufferPointer(start: pageBuffer, count: pd.encoding == .raw ? Int(pd.length) : 0)
            if verifyChecksums, let sums, let i = PageDataHeader.firstChecksumMismatch(data, checksums: sums) {
                throw .checksumMismatch(peer: peer, region: pd.region, offset: pd.offset + UInt64(i) * WireLimits.alignment)
            }
            return .pageData(pd, data)
        case .message(.pageData(let d)):
            throw .unexpected(peer: peer, "PAGE_DATA encoding \(d.header.encoding) is not supported")
        case .message(.error(let e)) where e.requestID == 0:
            throw .peerError(peer: peer, e)
        case .message(let m):
            return .message(m)
        }
    }

    /// Receives exactly `n` bytes into `p`: what is buffered first; a short rest (a header,
    /// a small frame) through `rx` with one `recv` of whatever has arrived; a long rest (page
    /// data) straight into `p`. An end of stream is a close between frames, else a truncation.
    /// Under a deadline, each `recv` waits first for the socket to be readable in time.
    private func fill(_ p: UnsafeMutableRawPointer, _ n: Int) throws(ChannelError) {
        var done = min(n, rxEnd - rxStart)
        if done > 0 {
            p.copyMemory(from: rx + rxStart, byteCount: done)
            rxStart += done
        }
        if rxStart == rxEnd { rxStart = 0; rxEnd = 0 }
        while done < n {
            let rest = n - done
            if let deadline { try waitReadable(deadline.until, for: deadline.what) }
            if rest >= FrameChannel.rxSize / 2 {
                if deadline != nil {
                    // MSG_WAITALL would block past the deadline: take what has arrived.
                    let got = try kernel { () throws(KernelError) in try socket.readSome(into: p + done, count: rest) }
                    if got == 0 { throw endOfStream(after: done) }
                    done += got
                    continue
                }
                let got = try kernel { () throws(KernelError) in try socket.readFully(into: p + done, count: rest) }
                if got < rest { throw endOfStream(after: done + got) }
                return
            }
            // `rx` is empty here: fill it with what has arrived, take what is needed.
            let got = try kernel { () throws(KernelError) in try socket.readSome(into: rx, count: FrameChannel.rxSize) }
            if got == 0 { throw endOfStream(after: done) }
            let take = min(rest, got)
            (p + done).copyMemory(from: rx, byteCount: take)
            (rxStart, rxEnd) = take == got ? (0, 0) : (take, got)
            done += take
        }
    }

    /// Returns once the socket is readable, or throws the deadline error once `until` passed.
    private func waitReadable(_ until: Deadline, for what: String) throws(ChannelError) {
        let readable = try kernel { () throws(KernelError) in try socket.waitReadable(until: until) }
        if !readable { throw .deadline(peer: peer, waitedFor: what, until) }
    }

    /// The 2 MiB-aligned page buffer, allocated at the first PAGE_DATA.
    private func allocatePageBuffer() -> UnsafeMutableRawPointer {
        // 2 MiB alignment so a received huge page can be installed straight from the buffer.
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: FrameChannel.pageBufferSize, alignment: hugePageSize)
        pageBuffer = buffer
        return buffer
    }

    private func endOfStream(after partBytes: Int) -> ChannelError {
        if parser.atFrameBoundary && partBytes == 0 { return .closed(peer: peer) }
        let expected = parser.frame.map { FrameHeader.size + Int($0.length) } ?? FrameHeader.size
        return .truncated(peer: peer, frame: parser.frame?.type, received: parser.frameOffset + partBytes, expected: expected)
    }

    private func kernel<T>(_ body: () throws(KernelError) -> T) throws(ChannelError) -> T {
        do { return try body() } catch { throw .kernel(error) }
    }

    private func growScratch(_ n: Int) {
        scratch.deallocate()
        scratchSize = max(n, 2 * scratchSize)
        scratch = .allocate(byteCount: scratchSize, alignment: 64)
    }
}

extension FrameConnection {
    /// PAGE_DATA without checksums.
    public func sendPageData(_ header: PageDataHeader, data: UnsafeRawBufferPointer?) throws(ChannelError) {
        try sendPageData(header, checksums: nil, data: data)
    }
}
