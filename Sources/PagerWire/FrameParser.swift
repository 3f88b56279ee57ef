/// The one frame parser: a state machine over a byte stream that says how many bytes it
/// needs next and where they go, validates each part as it arrives, and yields messages.
///
/// Both ``FrameDecoder`` (vectors, tests, the fuzzer) and the transport's receive path drive
/// it, so what is tested is what runs. It does no I/O and owns no buffer: the driver hands it
/// exactly the bytes ``need`` asks for. Raw PAGE_DATA bytes are the exception: the parser
/// never sees them. It asks for them as ``Need/pageBytes(_:)`` so the driver can receive them
/// straight into its own (page-aligned) buffer, and is told with ``pageBytesReceived()``.
///
/// After a throw the stream cannot be trusted: the parser stays failed-over (the driver ends
/// the session), and a new parser is needed for a new stream.
public struct FrameParser: Sendable {
    /// What the parser wants next.
    public enum Need: Equatable, Sendable {
        /// Exactly this many bytes for the parser: pass them to ``parse(_:)``. A frame header,
        /// a PAGE_DATA fixed part or its checksums, or a whole payload of any other message.
        case bytes(Int)
        /// Exactly this many raw page bytes of the current PAGE_DATA, for the caller's own
        /// buffer; then call ``pageBytesReceived()``.
        case pageBytes(Int)
    }

    /// What a finished frame yields.
    public enum Event: Equatable, Sendable {
        /// Any message, including PAGE_DATA whose data the parser held (compressed encoding,
        /// or a payload too short to have a fixed part, which fails in the decoder).
        case message(Message)
        /// PAGE_DATA with the raw, zero or sparse encoding: the fixed part (with a sparse
        /// frame's page map) and checksums, validated against the frame length; page bytes
        /// are in the caller's buffer.
        case pageData(PageDataHeader, checksums: [UInt32]?)
    }

    private enum State: Sendable {
        /// Waiting for the 8-byte header of the next frame.
        case header
        /// Waiting for the whole payload, decoded in one go (every message but PAGE_DATA).
        case payload(FrameHeader)
        /// Waiting for PAGE_DATA's 32-byte fixed part.
        case pageFixed(FrameHeader)
        /// Waiting for a sparse PAGE_DATA's page map.
        case pageMap(FrameHeader, PageDataHeader)
        /// Waiting for PAGE_DATA's checksums; `dataBytes` follow them.
        case checksums(FrameHeader, PageDataHeader, dataBytes: Int)
        /// Waiting for PAGE_DATA's compressed bytes (kept as a message's data).
        case compressed(FrameHeader, PageDataHeader, checksums: [UInt32]?, count: Int)
        /// Waiting for the driver to receive raw page bytes into its buffer.
        case pageBytes(FrameHeader, PageDataHeader, checksums: [UInt32]?, count: Int)
    }

    /// The largest payload accepted; frames announcing more are refused from their header.
    public var maxPayload: UInt32
    private var state: State = .header
    /// Bytes of the current frame consumed so far (0 between frames).
    public private(set) var frameOffset = 0

    public init(maxPayload: UInt32 = WireLimits.absoluteMaxPayload) {
        self.maxPayload = maxPayload
    }

    /// How many bytes the parser needs next, and where they go.
    public var need: Need {
        switch state {
        case .header: .bytes(FrameHeader.size)
        case .payload(let h): .bytes(Int(h.length))
        case .pageFixed: .bytes(PageDataHeader.size)
        case .pageMap(_, let pd): .bytes(8 * pd.pageMapWords)
        case .checksums(_, let pd, _): .bytes(4 * pd.checksumCount)
        case .compressed(_, _, _, let n): .bytes(n)
        case .pageBytes(_, _, _, let n): .pageBytes(n)
        }
    }

    /// The header of the frame being parsed; nil between frames.
    public var frame: FrameHeader? {
        switch state {
        case .header: nil
        case .payload(let h), .pageFixed(let h), .pageMap(let h, _), .checksums(let h, _, _), .compressed(let h, _, _, _),
             .pageBytes(let h, _, _, _): h
        }
    }

    /// True between frames: an end of stream here is a clean close, anywhere else a truncation.
    public var atFrameBoundary: Bool { frameOffset == 0 }

    /// Consumes exactly the bytes ``need`` asked for (`.bytes(n)`); returns the event when
    /// they finish a frame. Throws on the first part that shows the frame is malformed.
    public mutating func parse(_ bytes: UnsafeRawBufferPointer) throws(WireError) -> Event? {
        guard case .bytes(let n) = need else { preconditionFailure("parse(_:) while raw page bytes are expected") }
        precondition(bytes.count == n, "parse(_:) takes exactly the bytes asked for")
        frameOffset += n
        switch state {
        case .header:
            let h = try FrameHeader.decode(bytes, maxPayload: maxPayload)
            if h.type == .pageData && h.length >= UInt32(PageDataHeader.size) {
                state = .pageFixed(h)
                return nil
            }
            state = .payload(h)
            // An empty payload (GOODBYE) asks for no bytes: finish the frame now.
            return h.length == 0 ? try parse(UnsafeRawBufferPointer(start: nil, count: 0)) : nil
        case .payload(let h):
            return finish(.message(try Message.decode(header: h, payload: bytes)))
        case .pageFixed(let h):
            var r = ByteReader(bytes, context: .pageData)
            let pd = try PageDataHeader.decode(&r, flags: h.flags)
            if pd.encoding == .sparse {
                // The map's size follows from the range: refused here if the frame cannot hold it.
                let mapBytes = 8 * UInt64(pd.pageMapWords)
                if UInt64(PageDataHeader.size) + mapBytes > UInt64(h.length) {
                    throw .truncatedPayload(.pageData, field: "page_map", needed: PageDataHeader.size + Int(mapBytes), length: Int(h.length))
                }
                state = .pageMap(h, pd)
                return nil
            }
            return try afterFixed(h, pd)
        case .pageMap(let h, var pd):
            let map = (0..<bytes.count / 8).map { UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self)) }
            try PageDataHeader.checkPageMap(map, pages: pd.pageCount)
            pd.pageMap = map
            return try afterFixed(h, pd)
        case .checksums(let h, let pd, let dataBytes):
            let sums = (0..<bytes.count / 4).map { UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)) }
            return afterChecksums(h, pd, checksums: sums, dataBytes: dataBytes)
        case .compressed(_, let pd, let sums, _):
            return finish(.message(.pageData(PageData(header: pd, checksums: sums, data: Array(bytes)))))
        case .pageBytes:
            preconditionFailure("unreachable: need is .pageBytes")
        }
    }

    /// The driver has received the raw page bytes ``need`` asked for into its own buffer.
    public mutating func pageBytesReceived() -> Event {
        guard case .pageBytes(_, let pd, let sums, let n) = state else { preconditionFailure("no page bytes expected") }
        frameOffset += n
        return finish(.pageData(pd, checksums: sums))
    }

    /// The fixed part (and a sparse frame's map) is in: checksums next, or the data.
    private mutating func afterFixed(_ h: FrameHeader, _ pd: PageDataHeader) throws(WireError) -> Event? {
        let layout = try pd.payloadLayout(payloadLength: Int(h.length))
        if layout.checksumBytes > 0 {
            state = .checksums(h, pd, dataBytes: layout.dataBytes)
            return nil
        }
        return afterChecksums(h, pd, checksums: nil, dataBytes: layout.dataBytes)
    }

    private mutating func afterChecksums(_ h: FrameHeader, _ pd: PageDataHeader, checksums: [UInt32]?, dataBytes: Int) -> Event? {
        switch pd.encoding {
        case .zero:
            return finish(.pageData(pd, checksums: checksums))
        case .raw, .sparse:
            state = .pageBytes(h, pd, checksums: checksums, count: dataBytes)
        case .compressed:
            state = .compressed(h, pd, checksums: checksums, count: dataBytes)
        }
        return nil
    }

    private mutating func finish(_ event: Event) -> Event {
        state = .header
        frameOffset = 0
        return event
    }
}

extension PageDataHeader {
    /// What follows the fixed part (and a sparse frame's page map, which must be decoded into
    /// ``pageMap`` first) of a PAGE_DATA payload of `payloadLength` bytes: checksum bytes,
    /// then data bytes. Throws what a whole-payload decode would, so a stream parser can
    /// refuse a frame from its fixed part, before its page bytes arrive.
    public func payloadLayout(payloadLength: Int) throws(WireError) -> (checksumBytes: Int, dataBytes: Int) {
        // No overflow: checksumCount is at most 2^52 (length / 4096).
        let sumBytes = 4 * checksumCount
        let rest = payloadLength - PageDataHeader.size - (encoding == .sparse ? 8 * pageMapWords : 0)
        if sumBytes > rest {
            throw .truncatedPayload(.pageData, field: "checksums", needed: PageDataHeader.size + sumBytes, length: payloadLength)
        }
        let remaining = rest - sumBytes
        switch encoding {
        case .raw:
            if UInt64(remaining) != length {
                throw .fieldOutOfRange(.pageData, field: "data length", value: UInt64(remaining), limit: "equal to length \(length)")
            }
        case .zero:
            if remaining != 0 { throw .trailingBytes(.pageData, count: remaining) }
        case .sparse:
            let expected = UInt64(dataPageCount) * WireLimits.alignment
            if UInt64(remaining) != expected {
                throw .fieldOutOfRange(.pageData, field: "data length", value: UInt64(remaining), limit: "equal to the map's \(dataPageCount) data pages (\(expected) bytes)")
            }
        case .compressed:
            if remaining == 0 {
                throw .truncatedPayload(.pageData, field: "compressed data", needed: payloadLength + 1, length: payloadLength)
            }
        }
        return (sumBytes, remaining)
    }

    /// The index of the first 4 KiB page of `data` whose CRC-32C is not `checksums[i]`, or nil.
    public static func firstChecksumMismatch(_ data: UnsafeRawBufferPointer, checksums: [UInt32]) -> Int? {
        let page = Int(WireLimits.alignment)
        for (i, expected) in checksums.enumerated()
        where CRC32C.checksum(UnsafeRawBufferPointer(rebasing: data[i * page..<(i + 1) * page])) != expected {
            return i
        }
        return nil
    }
}
