import PagerCrypto
import PagerKernel
import PagerWire

/// Frames over one TCP connection: the TCP ``FrameConnection``.
///
/// Receiving drives the one ``FrameParser``: the parser says how many bytes it needs and
/// where, and this class only gets them there with as few `recv` calls as it can. Sending
/// writes each frame with one `sendmsg` (scatter-gather, no copy of page bytes), under a
/// lock held until the frame is written whole, so frames from several threads never
/// interleave on the wire.
///
/// With record protection (``protectSends(key:limits:)``, ``protectReceives(key:limits:clearErrorFirst:)``,
/// feature `encryption`) every frame is sealed on its way out, under the same lock (so the
/// record counter follows the wire order), from the page memory straight into one send
/// buffer; a received sealed payload is read where its plaintext will be used (page data onto
/// the 2 MiB-aligned page buffer), opened in place, and only then given to the parser.
public final class FrameChannel: FrameConnection, @unchecked Sendable {
    public let socket: TCPSocket
    /// Largest payload the peer accepts from us / we accept from it.
    public var sendLimit: UInt32 = WireLimits.absoluteMaxPayload
    public var receiveLimit: UInt32 = WireLimits.absoluteMaxPayload
    /// Verify CRC-32C of incoming pages when present.
    public var verifyChecksums = true
    /// The session's negotiated features, once WELCOME has set them (nil: not checked).
    /// PAGE_DATA using an encoding or flag of a feature not among them is refused (§3).
    public var negotiated: Features?

    /// One frame on the wire at a time, short writes completed inside. A ForegroundMutex: the
    /// background (`SCHED_IDLE`) push shares its connection with threads that answer faults,
    /// so a push frame must not stay half-written while a busy host leaves the push unscheduled.
    private let sendLock = ForegroundMutex(())
    /// Caps the bytes offered to one `sendmsg`: tests force short writes with it.
    var maxBytesPerSendCall = Int.max
    /// Seals every frame sent once set (used under `sendLock`).
    private var sealing: RecordSealer?

    // Receive side: touched only by the one receiving thread.
    private var parser = FrameParser()
    /// Opens every frame received once set.
    private var opening: RecordOpener?
    /// Where PAGE_DATA's bytes land: 2 MiB-aligned, so that a received huge page can be
    /// installed straight from it. Allocated at the first PAGE_DATA, not in `init`: a
    /// connection that never gets past its handshake (one of a flood) costs nothing here.
    /// It lies inside `pageArea`, preceded by room for a sealed PAGE_DATA's fields (so that
    /// its data, opened in place, lands on the aligned buffer) and followed by its tag's.
    private(set) var pageBuffer: UnsafeMutableRawPointer?
    private var pageArea: UnsafeMutableRawPointer?
    private static let pageBufferSize = Int(WireLimits.absoluteMaxPayload)
    /// PAGE_DATA's fields before its data: 32 bytes and a checksum per 4 KiB page, at most
    /// 32 + 4 · 528 bytes for the largest payload.
    private static let sealedPrefixRoom = 4096
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
        pageArea?.deallocate()
        rx.deallocate()
        scratch.deallocate()
    }

    public var peer: String { socket.peer }

    /// Shuts the socket down in both directions (`shutdown(SHUT_RDWR)`).
    public func shutdown() { socket.shutdown() }

    // MARK: Record protection

    /// Seals every frame sent from now on under `key` (this side's write key).
    public func protectSends(key: [UInt8], limits: RecordLimits = .standard) {
        do {
            let sealer = try RecordSealer(key: key, limits: limits)
            sendLock.withLock { _ in sealing = sealer }
        } catch {
            preconditionFailure("cannot set up AES-256-GCM: \(error)")
        }
    }

    /// Opens every frame received from now on under `key` (the peer's write key); with
    /// `clearErrorFirst` the next frame may instead be a clear ERROR (the peer's refusal
    /// before it could seal). Called by the receiving thread.
    public func protectReceives(key: [UInt8], limits: RecordLimits = .standard, clearErrorFirst: Bool = false) {
        do { opening = try RecordOpener(key: key, limits: limits, clearErrorFirst: clearErrorFirst) } catch {
            preconditionFailure("cannot set up AES-256-GCM: \(error)")
        }
    }

    /// Whether frames are sealed in each direction, and the keys used so far (1 until the
    /// first key update).
    public var protection: (sends: Int?, receives: Int?) {
        (sendLock.withLock { _ in sealing?.generation }, opening?.generation)
    }

    // MARK: Sending

    public func send(_ message: Message) throws(ChannelError) {
        let bytes = message.encoded()
        try write { try bytes.withUnsafeBytes { try writeFrame([$0]) } }
    }

    /// Sends PAGE_DATA whose bytes are the `segments` (raw: `length` bytes; sparse: the map's
    /// data pages; zero: none), with one `sendmsg` and no copy of the page bytes.
    public func sendPageData(_ header: PageDataHeader, checksums: [UInt32]?, segments: [UnsafeRawBufferPointer]) throws(ChannelError) {
        var h = header
        if checksums != nil { h.flags.insert(.checksums) } else { h.flags.remove(.checksums) }
        let sums = (checksums ?? []).map(\.bigEndian)
        let map = (h.encoding == .sparse ? h.pageMap ?? [] : []).map(\.bigEndian)
        let dataCount = h.encoding == .raw || h.encoding == .sparse ? h.dataPageCount * Int(WireLimits.alignment) : 0
        precondition(segments.reduce(0) { $0 + $1.count } == dataCount, "PAGE_DATA needs exactly its data pages' bytes")
        precondition(h.encoding != .sparse || map.count == h.pageMapWords, "sparse PAGE_DATA needs its page map")
        let payloadLength = PageDataHeader.size + 8 * map.count + 4 * sums.count + dataCount
        precondition(h.encoding == .zero || payloadLength <= Int(sendLimit), "PAGE_DATA larger than the peer accepts")
        try write {
            try withUnsafeTemporaryAllocation(byteCount: FrameHeader.size + PageDataHeader.size, alignment: 8) { head in
                h.encodeFrameHeader(into: head.baseAddress!, payloadLength: payloadLength)
                try map.withUnsafeBytes { m in
                    try sums.withUnsafeBytes { s in try writeFrame([UnsafeRawBufferPointer(head), m, s] + segments.filter { $0.count > 0 }) }
                }
            }
        }
    }

    /// Writes one whole frame under the send lock (sealed into one buffer first when
    /// sends are protected). `parts[0]` begins with the frame's 8-byte header.
    private func writeFrame(_ parts: [UnsafeRawBufferPointer]) throws {
        let cap = maxBytesPerSendCall
        try sendLock.withLock { _ in
            guard let sealing else { return try socket.writeAll(parts, maxBytesPerCall: cap) }
            let sealed: UnsafeRawBufferPointer
            do { sealed = try sealing.seal(parts) } catch { preconditionFailure("AES-256-GCM seal failed: \(error)") }
            try socket.writeAll([sealed], maxBytesPerCall: cap)
        }
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

    /// Bytes buffered here, or the socket readable now (`poll` with no wait).
    public func inputPending() -> Bool {
        rxEnd > rxStart || (try? socket.waitReadable(timeoutMilliseconds: 0)) == true
    }

    /// The next frame if it is an ERROR (whether or not its request id names a request), nil
    /// when it is anything else: what a client that expects a refusal reads.
    public func nextError() throws(ChannelError) -> ProtocolError? {
        do {
            if case .message(.error(let e)) = try receive() { return e }
            return nil
        } catch .peerError(_, let e) {
            return e
        }
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
            if let opening, let event = try receiveSealed(opening) { return try deliver(event) }
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

    /// One sealed frame: its clear header checked (type, flags, length within the limit and
    /// the tag) before its payload is read, the payload read where its plaintext is used and
    /// opened in place, then parsed. Nil when the frame is the clear ERROR a peer may send
    /// first: its header has gone to the parser, and the plain path reads the rest.
    private func receiveSealed(_ opening: RecordOpener) throws -> FrameParser.Event? {
        let tag = AESGCMSealer.tagByteCount
        return try withUnsafeTemporaryAllocation(byteCount: 2 * FrameHeader.size, alignment: 8) { headers in
            let sealedHeader = UnsafeMutableRawBufferPointer(rebasing: headers[..<FrameHeader.size])
            let plainHeader = UnsafeMutableRawBufferPointer(rebasing: headers[FrameHeader.size...])
            try fill(sealedHeader.baseAddress!, FrameHeader.size)
            let type = UInt16(bigEndian: sealedHeader.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
            let flags = UInt16(bigEndian: sealedHeader.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            let length = Int(UInt32(bigEndian: sealedHeader.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
            if opening.clearErrorAllowed {
                opening.clearErrorAllowed = false
                if type == MessageType.error.rawValue {
                    _ = try parser.parse(UnsafeRawBufferPointer(sealedHeader))
                    return nil
                }
            }
            guard length >= tag else { throw ChannelError.sealedRecordRejected(peer: peer, type: MessageType(rawValue: type), reason: "\(length) bytes, shorter than its 16-byte tag") }
            let plaintext = length - tag
            plainHeader.copyMemory(from: UnsafeRawBufferPointer(sealedHeader))
            plainHeader.storeBytes(of: UInt32(plaintext).bigEndian, toByteOffset: 4, as: UInt32.self)
            // Type, flags and the payload limit, from the header alone: an oversized frame is
            // refused before a byte of it is read.
            let header = try FrameHeader.decode(UnsafeRawBufferPointer(plainHeader), maxPayload: receiveLimit)
            let target = sealedTarget(header, flags: flags, plaintext: plaintext)
            try fill(target, length)
            guard opening.open(header: UnsafeRawBufferPointer(sealedHeader), sealed: UnsafeMutableRawBufferPointer(start: target, count: length)) else {
                throw ChannelError.sealedRecordRejected(peer: peer, type: header.type,
                                                        reason: "its tag does not verify as record \(opening.nextRecord - 1) of key \(opening.generation): changed, dropped, repeated, reordered or moved on the way")
            }
            return try parseOpened(UnsafeRawBufferPointer(plainHeader), payload: UnsafeRawBufferPointer(start: target, count: plaintext))
        }
    }

    /// Where a sealed payload is read and opened: PAGE_DATA so that its data ends up at the
    /// aligned page buffer (its fields just before it), anything else in `scratch`.
    private func sealedTarget(_ header: FrameHeader, flags: UInt16, plaintext: Int) -> UnsafeMutableRawPointer {
        let fixed = PageDataHeader.size
        guard header.type == .pageData, plaintext >= fixed else {
            if plaintext + AESGCMSealer.tagByteCount > scratchSize { growScratch(plaintext + AESGCMSealer.tagByteCount) }
            return scratch
        }
        // With checksums each 4 KiB of data has 4 bytes of checksum: 4100 bytes a page.
        let withSums = PageDataHeader.Flags(rawValue: flags).contains(.checksums)
        let prefix = withSums && (plaintext - fixed) % 4100 == 0 ? fixed + 4 * ((plaintext - fixed) / 4100) : fixed
        return (pageBuffer ?? allocatePageBuffer()) - min(prefix, FrameChannel.sealedPrefixRoom)
    }

    /// Feeds an opened frame to the parser: the plain header, then the payload's parts where
    /// they lie; page data is where the parser wants it already (moved there otherwise).
    private func parseOpened(_ header: UnsafeRawBufferPointer, payload: UnsafeRawBufferPointer) throws -> FrameParser.Event {
        if let event = try parser.parse(header) { return event }
        var offset = 0
        while true {
            let event: FrameParser.Event?
            switch parser.need {
            case .bytes(let n):
                event = try parser.parse(UnsafeRawBufferPointer(rebasing: payload[offset..<offset + n]))
                offset += n
            case .pageBytes(let n):
                let data = payload.baseAddress! + offset
                let buffer = pageBuffer ?? allocatePageBuffer()
                if data != UnsafeRawPointer(buffer) { buffer.copyMemory(from: data, byteCount: n) }
                offset += n
                event = parser.pageBytesReceived()
            }
            if let event { return event }
        }
    }

    /// What a parsed frame means to the caller: verified page data, or a message.
    private func deliver(_ event: FrameParser.Event) throws(ChannelError) -> Incoming {
        switch event {
        case .pageData(let pd, let sums):
            if let negotiated {
                if pd.encoding == .sparse && !negotiated.contains(.sparse) {
                    throw .unexpected(peer: peer, "sparse PAGE_DATA (encoding 3) without the sparse feature")
                }
                if pd.flags.contains(.checksums) && !negotiated.contains(.checksums) {
                    throw .unexpected(peer: peer, "PAGE_DATA with checksums without the checksums feature")
                }
            }
            let data = UnsafeRawBufferPointer(start: pageBuffer, count: pd.encoding == .zero ? 0 : pd.dataPageCount * Int(WireLimits.alignment))
            if verifyChecksums, let sums, let i = PageDataHeader.firstChecksumMismatch(data, checksums: sums) {
                throw .checksumMismatch(peer: peer, region: pd.region, offset: pd.offset + UInt64(pd.rangePage(ofDataPage: i)) * WireLimits.alignment)
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

    /// The 2 MiB-aligned page buffer, allocated at the first PAGE_DATA. The 2 MiB before it
    /// are address space only (the last page holds a sealed frame's fields), never touched
    /// otherwise.
    private func allocatePageBuffer() -> UnsafeMutableRawPointer {
        let area = UnsafeMutableRawPointer.allocate(byteCount: hugePageSize + FrameChannel.pageBufferSize + AESGCMSealer.tagByteCount,
                                                    alignment: hugePageSize)
        pageArea = area
        pageBuffer = area + hugePageSize
        return area + hugePageSize
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
    public func inputPending() -> Bool { false }

    /// PAGE_DATA whose bytes are `data` (raw) or nothing (zero).
    public func sendPageData(_ header: PageDataHeader, checksums: [UInt32]? = nil, data: UnsafeRawBufferPointer?) throws(ChannelError) {
        try sendPageData(header, checksums: checksums, segments: data.map { [$0] } ?? [])
    }
}
