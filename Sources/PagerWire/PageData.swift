// PAGE_DATA (§4.8): the message and its fixed part, with the sparse encoding's page map.

/// PAGE_DATA (server to client): the content of a range of pages.
public struct PageData: Equatable, Sendable {
    public var header: PageDataHeader
    /// One CRC32C per 4 KiB of the range (only with ``Features/checksums``; never with `.zero`).
    public var checksums: [UInt32]?
    /// The raw bytes (`.raw`: exactly `length` bytes; `.sparse`: the data pages of the map, in
    /// order) or compressed bytes (`.compressed`); empty for `.zero`.
    public var data: [UInt8]

    public typealias Flags = PageDataHeader.Flags
    public typealias Encoding = PageDataHeader.Encoding

    public init(requestID: UInt32, region: UInt32, offset: UInt64, length: UInt64, flags: Flags,
                encoding: Encoding, pageMap: [UInt64]? = nil, checksums: [UInt32]? = nil, data: [UInt8]) {
        header = PageDataHeader(requestID: requestID, region: region, offset: offset, length: length,
                                flags: checksums == nil ? flags.subtracting(.checksums) : flags.union(.checksums),
                                encoding: encoding, pageMap: pageMap)
        self.checksums = checksums
        self.data = data
    }
}

/// The fixed part of PAGE_DATA, which the receive path decodes on its own so page bytes can
/// stay where they landed instead of being copied into a message.
public struct PageDataHeader: Equatable, Sendable {
    public var requestID: UInt32
    public var region: UInt32
    public var offset: UInt64
    public var length: UInt64
    public var flags: Flags
    public var encoding: Encoding
    /// `.sparse` only: which 4 KiB pages of the range carry data (bit `i % 64` of word
    /// `i / 64`, least significant first); the others are zero. Nil for the other encodings.
    public var pageMap: [UInt64]?

    /// Bytes of the fixed part, after the frame header.
    public static let size = 32

    public struct Flags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// Answers an urgent request.
        public static let urgent = Flags(rawValue: 1 << 0)
        /// Sent by the background push, not asked for.
        public static let push = Flags(rawValue: 1 << 1)
        /// CRC32C checksums follow the fixed part.
        public static let checksums = Flags(rawValue: 1 << 2)
        static let all: Flags = [.urgent, .push, .checksums]
    }

    public enum Encoding: UInt8, Sendable {
        /// `length` bytes of page content follow.
        case raw = 0
        /// Every byte of the range is zero; nothing follows. `length` may cover a whole region.
        case zero = 1
        /// Compressed content follows (reserved for ``Features/compression``).
        case compressed = 2
        /// Data and zero pages mixed: the page map, then the data pages only (§4.8).
        case sparse = 3
    }

    public init(requestID: UInt32, region: UInt32, offset: UInt64, length: UInt64, flags: Flags, encoding: Encoding,
                pageMap: [UInt64]? = nil) {
        self.requestID = requestID
        self.region = region
        self.offset = offset
        self.length = length
        self.flags = flags
        self.encoding = encoding
        self.pageMap = pageMap
    }

    /// 4 KiB pages in the range.
    public var pageCount: Int { Int(length / WireLimits.alignment) }

    /// Words of a `.sparse` frame's page map: one bit per 4 KiB page.
    public var pageMapWords: Int { (pageCount + 63) / 64 }

    /// 4 KiB pages whose bytes the frame carries: all (raw), none (zero), the map's (sparse).
    public var dataPageCount: Int {
        switch encoding {
        case .raw: pageCount
        case .zero, .compressed: 0
        case .sparse: (pageMap ?? []).reduce(0) { $0 + $1.nonzeroBitCount }
        }
    }

    /// Number of checksums that follow when ``Flags/checksums`` is set: one per data page.
    public var checksumCount: Int { flags.contains(.checksums) ? (encoding == .sparse ? dataPageCount : pageCount) : 0 }

    /// The payload length of the whole frame for a `.raw`, `.zero` or `.sparse` PAGE_DATA.
    public var payloadLength: Int {
        PageDataHeader.size + (encoding == .sparse ? 8 * pageMapWords : 0) + 4 * checksumCount
            + (encoding == .raw || encoding == .sparse ? dataPageCount * Int(WireLimits.alignment) : 0)
    }

    /// The range as runs in order: each a byte range of the region and, for data, where its
    /// bytes start in the frame's data (nil: zeros). One run for raw and zero frames.
    public var runs: [(range: Range<UInt64>, dataOffset: Int?)] {
        switch encoding {
        case .raw: return [(offset..<offset + length, 0)]
        case .zero, .compressed: return [(offset..<offset + length, nil)]
        case .sparse:
            let map = pageMap ?? []
            let page = WireLimits.alignment
            var result: [(range: Range<UInt64>, dataOffset: Int?)] = []
            var dataAt = 0
            var i = 0
            while i < pageCount {
                let data = map[i / 64] & (1 << UInt64(i % 64)) != 0
                var j = i + 1
                while j < pageCount && (map[j / 64] & (1 << UInt64(j % 64)) != 0) == data { j += 1 }
                result.append((offset + UInt64(i) * page..<offset + UInt64(j) * page, data ? dataAt : nil))
                if data { dataAt += (j - i) * Int(page) }
                i = j
            }
            return result
        }
    }

    /// The page of the range (0-based) that data page `i` of the frame is: `i` itself unless
    /// the frame is sparse, where it is the map's `i`-th set bit.
    public func rangePage(ofDataPage i: Int) -> Int {
        guard encoding == .sparse, let map = pageMap else { return i }
        var left = i
        for (w, word) in map.enumerated() {
            let n = word.nonzeroBitCount
            if left >= n { left -= n; continue }
            var bits = word
            for _ in 0..<left { bits &= bits - 1 } // clear the lowest set bits before it
            return w * 64 + bits.trailingZeroBitCount
        }
        return i
    }

    /// Checks a decoded page map against the range: the right number of words, no bit past
    /// the last page, at least one data page (a range of zeros is a `.zero` frame).
    public static func checkPageMap(_ map: [UInt64], pages: Int) throws(WireError) {
        let extra = pages % 64
        if extra != 0, let last = map.last, last >> UInt64(extra) != 0 {
            throw .fieldOutOfRange(.pageData, field: "page_map", value: last, limit: "no bit past page \(pages - 1) of the range")
        }
        if map.allSatisfy({ $0 == 0 }) {
            throw .fieldOutOfRange(.pageData, field: "page_map", value: 0, limit: "at least one data page (an all-zero range is the zero encoding)")
        }
    }

    /// Writes the 8-byte frame header and this fixed part (40 bytes) at `out`, for a frame
    /// whose whole payload is `payloadLength` bytes. No allocation: the send path's fast form.
    public func encodeFrameHeader(into out: UnsafeMutableRawPointer, payloadLength: Int) {
        func put<T: FixedWidthInteger>(_ v: T, _ at: Int) { out.storeBytes(of: v.bigEndian, toByteOffset: at, as: T.self) }
        put(MessageType.pageData.rawValue, 0)
        put(flags.rawValue, 2)
        put(UInt32(payloadLength), 4)
        put(requestID, 8)
        put(region, 12)
        put(offset, 16)
        put(length, 24)
        put(encoding.rawValue, 32)
        put(UInt8(0), 33)
        put(UInt16(0), 34)
        put(UInt32(0), 36)
    }

    /// Decodes the fixed part, checking alignment and ranges.
    public static func decode(_ r: inout ByteReader, flags raw: UInt16) throws(WireError) -> PageDataHeader {
        let requestID = try r.u32("request_id")
        let region = try r.u32("region_id")
        let offset = try r.u64("offset")
        let length = try r.u64("length")
        let encodingByte = try r.u8("encoding")
        try r.reserved(7, "reserved")
        guard let encoding = Encoding(rawValue: encodingByte) else {
            throw .fieldOutOfRange(.pageData, field: "encoding", value: UInt64(encodingByte), limit: "0 (raw), 1 (zero), 2 (compressed) or 3 (sparse)")
        }
        try checkRange(.pageData, offset: offset, length: length)
        let flags = Flags(rawValue: raw)
        if flags.contains(.urgent) && flags.contains(.push) {
            throw .fieldOutOfRange(.pageData, field: "flags", value: UInt64(raw), limit: "urgent or push, not both")
        }
        if flags.contains(.checksums) && encoding == .zero {
            throw .fieldOutOfRange(.pageData, field: "flags", value: UInt64(raw), limit: "without checksums for the zero encoding")
        }
        return PageDataHeader(requestID: requestID, region: region, offset: offset, length: length, flags: flags, encoding: encoding)
    }
}
