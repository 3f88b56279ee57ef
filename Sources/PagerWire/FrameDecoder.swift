/// Splits a byte stream held in memory into messages: ``FrameParser`` over a growing buffer.
/// Feed it bytes as they arrive with ``append(_:)``; ``next()`` returns `nil` until a whole
/// frame is buffered, and throws on the first malformed frame (after which the stream cannot
/// be trusted and the session must end).
public struct FrameDecoder: Sendable {
    /// The largest payload accepted; frames announcing more are refused from their header.
    public var maxPayload: UInt32
    private var buffer: [UInt8] = []
    private var start = 0

    public init(maxPayload: UInt32 = WireLimits.absoluteMaxPayload) {
        self.maxPayload = maxPayload
    }

    /// Bytes received but not yet returned as messages.
    public var bufferedBytes: Int { buffer.count - start }

    public mutating func append(_ bytes: some Sequence<UInt8>) {
        compact()
        buffer.append(contentsOf: bytes)
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        compact()
        buffer.append(contentsOf: bytes)
    }

    /// The header of the next frame, if its 8 bytes have arrived (validated).
    public func peekHeader() throws(WireError) -> FrameHeader? {
        guard bufferedBytes >= FrameHeader.size else { return nil }
        // Array.withUnsafeBytes rethrows untyped errors: carry the typed one out in a Result.
        let start = start, maxPayload = maxPayload
        return try buffer.withUnsafeBytes { raw in
            Result { () throws(WireError) in
                try FrameHeader.decode(UnsafeRawBufferPointer(rebasing: raw[start..<start + FrameHeader.size]), maxPayload: maxPayload)
            }
        }.get()
    }

    /// The next whole message, or nil if more bytes are needed. Leaves the buffer as it was
    /// when returning nil or throwing.
    public mutating func next() throws(WireError) -> Message? {
        guard let header = try peekHeader() else { return nil }
        // Whole frames only, as before the parser: a malformed frame whose end has not
        // arrived is "need more bytes" here (the transport, which streams, refuses it sooner).
        guard bufferedBytes >= FrameHeader.size + Int(header.length) else { return nil }
        let (message, end) = try buffer.withUnsafeBytes { raw in
            Result { () throws(WireError) in try FrameDecoder.parseFrame(raw, from: start, maxPayload: maxPayload) }
        }.get()
        start = end
        return message
    }

    /// Runs a fresh parser over the whole frame at `offset` of `raw`, copying raw page bytes
    /// into the message (the transport receives them into its page buffer instead).
    private static func parseFrame(_ raw: UnsafeRawBufferPointer, from offset: Int, maxPayload: UInt32) throws(WireError) -> (Message, Int) {
        var parser = FrameParser(maxPayload: maxPayload)
        var at = offset
        var data: [UInt8] = []
        while true {
            let event: FrameParser.Event?
            switch parser.need {
            case .bytes(let n):
                event = try parser.parse(UnsafeRawBufferPointer(rebasing: raw[at..<at + n]))
                at += n
            case .pageBytes(let n):
                data = Array(raw[at..<at + n])
                at += n
                event = parser.pageBytesReceived()
            }
            switch event {
            case nil: continue
            case .message(let m)?: return (m, at)
            case .pageData(let h, let sums)?: return (.pageData(PageData(header: h, checksums: sums, data: data)), at)
            }
        }
    }

    private mutating func compact() {
        if start > 0 && (start == buffer.count || start >= 64 << 10) {
            buffer.removeSubrange(0..<start)
            start = 0
        }
    }
}

extension PageData {
    /// A PAGE_DATA message from its decoded parts (header exactly as received).
    public init(header: PageDataHeader, checksums: [UInt32]?, data: [UInt8]) {
        self.init(requestID: header.requestID, region: header.region, offset: header.offset, length: header.length,
                  flags: header.flags, encoding: header.encoding, pageMap: header.pageMap, checksums: checksums, data: data)
        self.header = header
    }
}
