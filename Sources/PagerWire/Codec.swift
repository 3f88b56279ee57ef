/// The 8-byte header in front of every frame: type (u16), flags (u16), payload length (u32).
public struct FrameHeader: Equatable, Sendable {
    public var type: MessageType
    public var flags: UInt16
    public var length: UInt32

    public static let size = 8

    /// Decodes and checks a header: the type must be known, undefined flag bits clear, and
    /// the length within `maxPayload` (checked here so an oversized frame is refused before
    /// its payload is read or buffered).
    public static func decode(_ bytes: UnsafeRawBufferPointer, maxPayload: UInt32 = WireLimits.absoluteMaxPayload) throws(WireError) -> FrameHeader {
        precondition(bytes.count >= size)
        let rawType = UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
        let flags = UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        let length = UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        guard let type = MessageType(rawValue: rawType) else { throw .unknownMessageType(rawType) }
        if flags & ~type.definedFlags != 0 { throw .unknownFlags(type, flags: flags & ~type.definedFlags) }
        let limit = min(maxPayload, WireLimits.absoluteMaxPayload)
        if length > limit { throw .frameTooLarge(type, length: length, limit: limit) }
        return FrameHeader(type: type, flags: flags, length: length)
    }
}

extension Message {
    /// The whole frame: header and payload.
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: 64)
        encode(into: &w)
        return w.bytes
    }

    /// Appends the whole frame to `w`.
    public func encode(into w: inout ByteWriter) {
        let start = w.bytes.count
        w.u16(type.rawValue)
        w.u16(flags)
        w.u32(0) // length, patched below
        switch self {
        case .hello(let h):
            w.u32(helloMagic)
            w.u16(h.minVersion)
            w.u16(h.maxVersion)
            w.u64(h.features.rawValue)
            w.u32(h.maxPayload)
            w.u8(h.channel.rawValue)
            w.zeros(3)
            w.u64(h.resumeSession)
            w.raw(fixed(h.resumeToken, 16))
            writeString(&w, h.clientName, cap: WireLimits.clientNameBytes)
            writeString(&w, h.keyIdentity, cap: WireLimits.keyIdentityBytes)
        case .welcome(let m):
            w.u16(m.version)
            w.u16(0)
            w.u64(m.features.rawValue)
            w.u32(m.maxPayload)
            w.u32(m.regionCount)
            w.u64(m.session)
            w.raw(fixed(m.resumeToken, 16))
        case .authChallenge(let nonce, let share):
            w.raw(fixed(nonce, 32))
            w.raw(fixed(share, 32))
        case .authResponse(let clientNonce, let share, let mac):
            w.raw(fixed(clientNonce, 32))
            w.raw(fixed(share, 32))
            w.raw(fixed(mac, 32))
        case .authConfirm(let mac):
            w.raw(fixed(mac, 32))
        case .region(let r):
            w.u32(r.id)
            w.u8(r.pageShift)
            w.u8(r.flags.rawValue)
            w.u16(0)
            w.u64(r.length)
            writeString(&w, r.name, cap: WireLimits.regionNameBytes)
        case .pageRequest(let p):
            w.u32(p.requestID)
            w.u32(p.region)
            w.u64(p.offset)
            w.u64(p.length)
        case .pageData(let d):
            let h = d.header
            w.u32(h.requestID)
            w.u32(h.region)
            w.u64(h.offset)
            w.u64(h.length)
            w.u8(h.encoding.rawValue)
            w.zeros(7)
            for word in h.pageMap ?? [] { w.u64(word) }
            for c in d.checksums ?? [] { w.u32(c) }
            w.raw(d.data)
        case .invalidate(let inv):
            w.u32(inv.sequence)
            w.u32(inv.region)
            w.u32(UInt32(inv.ranges.count))
            w.u32(0)
            for r in inv.ranges {
                w.u64(r.offset)
                w.u64(r.length)
            }
        case .invalidateAck(let sequence, let region):
            w.u32(sequence)
            w.u32(region)
        case .received(let m):
            w.u32(m.region)
            w.u32(UInt32(m.ranges.count))
            for r in m.ranges {
                w.u64(r.offset)
                w.u64(r.length)
            }
        case .switched(let region, let lastSequence):
            w.u32(region)
            w.u32(lastSequence)
        case .pushComplete(let region, let bytes):
            w.u32(region)
            w.u32(0)
            w.u64(bytes)
        case .complete(let region, let resident):
            w.u32(region)
            w.u32(0)
            w.u64(resident)
        case .completeAck(let region):
            w.u32(region)
            w.u32(0)
        case .ping(let token, let timestamp), .pong(let token, let timestamp):
            w.u64(token)
            w.u64(timestamp)
        case .pushRead(let region, let offset, let length):
            w.u32(region)
            w.u32(length)
            w.u64(offset)
        case .rdmaKey(let region, let rkey, let address, let length):
            w.u32(region)
            w.u32(rkey)
            w.u64(address)
            w.u64(length)
        case .goodbye:
            break
        case .error(let e):
            w.u16(e.code.rawValue)
            w.u16(0)
            w.u32(e.requestID)
            writeString(&w, e.message, cap: WireLimits.errorMessageBytes)
        }
        w.patchU32(at: start + 4, UInt32(w.bytes.count - start - FrameHeader.size))
    }

    /// The header's flags word.
    public var flags: UInt16 {
        switch self {
        case .pageRequest(let p): p.flags.rawValue
        case .pageData(let d): d.header.flags.rawValue
        case .received(let m): (m.more ? Received.moreFlag : 0) | (m.staged ? Received.stagedFlag : 0)
        default: 0
        }
    }

    /// Decodes one message from its header and exactly its payload.
    public static func decode(header: FrameHeader, payload: UnsafeRawBufferPointer) throws(WireError) -> Message {
        precondition(payload.count == Int(header.length))
        var r = ByteReader(payload, context: header.type)
        let message: Message
        switch header.type {
        case .hello:
            let magic = try r.u32("magic")
            if magic != helloMagic { throw .badMagic(magic) }
            let minVersion = try r.u16("min_version")
            let maxVersion = try r.u16("max_version")
            if minVersion == 0 || minVersion > maxVersion {
                throw .fieldOutOfRange(.hello, field: "min_version", value: UInt64(minVersion), limit: "between 1 and max_version \(maxVersion)")
            }
            let features = Features(rawValue: try r.u64("features"))
            let maxPayload = try checkMaxPayload(.hello, try r.u32("max_payload"))
            let rawChannel = try r.u8("channel")
            guard let channel = Hello.Channel(rawValue: rawChannel) else {
                throw .fieldOutOfRange(.hello, field: "channel", value: UInt64(rawChannel), limit: "0 (demand) or 1 (push)")
            }
            try r.reserved(3, "reserved")
            let session = try r.u64("resume_session")
            if session == 0 && channel != .demand {
                throw .fieldOutOfRange(.hello, field: "channel", value: UInt64(rawChannel), limit: "0 (demand) for a new session")
            }
            let token = try r.bytes(16, "resume_token")
            let name = try r.string("client_name", limit: WireLimits.clientNameBytes)
            let identity = try r.string("key_identity", limit: WireLimits.keyIdentityBytes)
            message = .hello(Hello(minVersion: minVersion, maxVersion: maxVersion, features: features, maxPayload: maxPayload,
                                   channel: channel, resumeSession: session, resumeToken: token, clientName: name, keyIdentity: identity))
        case .welcome:
            let version = try r.u16("version")
            if version == 0 { throw .fieldOutOfRange(.welcome, field: "version", value: 0, limit: "at least 1") }
            try r.reserved(2, "reserved")
            let features = Features(rawValue: try r.u64("features"))
            let maxPayload = try checkMaxPayload(.welcome, try r.u32("max_payload"))
            let count = try r.u32("region_count")
            let session = try r.u64("session_id")
            let token = try r.bytes(16, "resume_token")
            message = .welcome(Welcome(version: version, features: features, maxPayload: maxPayload, regionCount: count,
                                       session: session, resumeToken: token))
        case .authChallenge:
            message = .authChallenge(nonce: try r.bytes(32, "server_nonce"), share: try r.bytes(32, "server_share"))
        case .authResponse:
            message = .authResponse(clientNonce: try r.bytes(32, "client_nonce"), share: try r.bytes(32, "client_share"),
                                    mac: try r.bytes(32, "mac"))
        case .authConfirm:
            message = .authConfirm(mac: try r.bytes(32, "mac"))
        case .region:
            let id = try r.u32("region_id")
            let shift = try r.u8("page_shift")
            if !RegionDescriptor.pageShifts.contains(shift) {
                throw .fieldOutOfRange(.region, field: "page_shift", value: UInt64(shift), limit: "12, 21 or 30")
            }
            let flagsByte = try r.u8("flags")
            let flags = RegionDescriptor.Flags(rawValue: flagsByte)
            if !RegionDescriptor.Flags.all.isSuperset(of: flags) { throw .reservedNotZero(.region, field: "flags") }
            try r.reserved(2, "reserved")
            let length = try r.u64("length")
            let pageSize = UInt64(1) << UInt64(shift)
            if length == 0 || length % pageSize != 0 {
                throw .fieldOutOfRange(.region, field: "length", value: length, limit: "a nonzero multiple of the page size \(pageSize)")
            }
            let name = try r.string("name", limit: WireLimits.regionNameBytes)
            message = .region(RegionDescriptor(id: id, pageShift: shift, flags: flags, length: length, name: name))
        case .pageRequest:
            let id = try r.u32("request_id")
            let region = try r.u32("region_id")
            let offset = try r.u64("offset")
            let length = try r.u64("length")
            try checkRange(.pageRequest, offset: offset, length: length)
            let flags = PageRequest.Flags(rawValue: header.flags)
            if flags == [.urgent, .prefetch] {
                throw .fieldOutOfRange(.pageRequest, field: "flags", value: UInt64(header.flags), limit: "urgent or prefetch, not both")
            }
            message = .pageRequest(PageRequest(requestID: id, region: region, offset: offset, length: length, flags: flags))
        case .pageData:
            var h = try PageDataHeader.decode(&r, flags: header.flags)
            if h.encoding == .sparse {
                if PageDataHeader.size + 8 * h.pageMapWords > payload.count {
                    throw .truncatedPayload(.pageData, field: "page_map", needed: PageDataHeader.size + 8 * h.pageMapWords, length: payload.count)
                }
                var map: [UInt64] = []
                for _ in 0..<h.pageMapWords { map.append(try r.u64("page_map")) }
                try PageDataHeader.checkPageMap(map, pages: h.pageCount)
                h.pageMap = map
            }
            // The same layout check the stream parser makes from the fixed part alone.
            let layout = try h.payloadLayout(payloadLength: payload.count)
            var checksums: [UInt32]?
            if layout.checksumBytes > 0 {
                checksums = []
                checksums!.reserveCapacity(h.checksumCount)
                for _ in 0..<h.checksumCount { checksums!.append(try r.u32("checksums")) }
            }
            let data = h.encoding == .zero ? [] : try r.bytes(layout.dataBytes, "data")
            var d = PageData(requestID: h.requestID, region: h.region, offset: h.offset, length: h.length,
                             flags: h.flags, encoding: h.encoding, pageMap: h.pageMap, checksums: checksums, data: data)
            d.header = h
            message = .pageData(d)
        case .invalidate:
            let sequence = try r.u32("sequence")
            let region = try r.u32("region_id")
            let count = try r.u32("range_count")
            try r.reserved(4, "reserved")
            if count == 0 { throw .fieldOutOfRange(.invalidate, field: "range_count", value: 0, limit: "at least 1") }
            if UInt64(count) * 16 != UInt64(r.remaining) {
                throw .fieldOutOfRange(.invalidate, field: "range_count", value: UInt64(count), limit: "\(r.remaining / 16) (the ranges in the payload)")
            }
            var ranges: [PageRange] = []
            ranges.reserveCapacity(Int(count))
            for _ in 0..<count {
                let offset = try r.u64("ranges.offset")
                let length = try r.u64("ranges.length")
                try checkRange(.invalidate, offset: offset, length: length, field: "ranges[\(ranges.count)]")
                ranges.append(PageRange(offset: offset, length: length))
            }
            message = .invalidate(Invalidate(sequence: sequence, region: region, ranges: ranges))
        case .invalidateAck:
            message = .invalidateAck(sequence: try r.u32("sequence"), region: try r.u32("region_id"))
        case .received:
            let region = try r.u32("region_id")
            let count = try r.u32("range_count")
            if UInt64(count) * 16 != UInt64(r.remaining) {
                throw .fieldOutOfRange(.received, field: "range_count", value: UInt64(count), limit: "\(r.remaining / 16) (the ranges in the payload)")
            }
            var ranges: [PageRange] = []
            ranges.reserveCapacity(Int(count))
            var end: UInt64 = 0
            for _ in 0..<count {
                let offset = try r.u64("ranges.offset")
                let length = try r.u64("ranges.length")
                try checkRange(.received, offset: offset, length: length, field: "ranges[\(ranges.count)]")
                // Ascending and apart: one map has one way to be written, and a peer's overlap
                // or disorder is refused rather than interpreted.
                if !ranges.isEmpty && offset <= end {
                    throw .fieldOutOfRange(.received, field: "ranges[\(ranges.count)].offset", value: offset, limit: "above \(hex64(end)), the end of the range before (ascending, apart)")
                }
                end = offset + length
                ranges.append(PageRange(offset: offset, length: length))
            }
            message = .received(Received(region: region, ranges: ranges, more: header.flags & Received.moreFlag != 0,
                                         staged: header.flags & Received.stagedFlag != 0))
        case .switched:
            message = .switched(region: try r.u32("region_id"), lastSequence: try r.u32("last_sequence"))
        case .pushComplete:
            let region = try r.u32("region_id")
            try r.reserved(4, "reserved")
            message = .pushComplete(region: region, bytes: try r.u64("bytes"))
        case .complete:
            let region = try r.u32("region_id")
            try r.reserved(4, "reserved")
            message = .complete(region: region, residentBytes: try r.u64("resident_bytes"))
        case .completeAck:
            let region = try r.u32("region_id")
            try r.reserved(4, "reserved")
            message = .completeAck(region: region)
        case .ping:
            message = .ping(token: try r.u64("token"), timestamp: try r.u64("timestamp"))
        case .pong:
            message = .pong(token: try r.u64("token"), timestamp: try r.u64("timestamp"))
        case .pushRead:
            let region = try r.u32("region_id")
            let length = try r.u32("length")
            let offset = try r.u64("offset")
            try checkRange(.pushRead, offset: offset, length: UInt64(length))
            if length > WireLimits.pushReadBytes {
                throw .fieldOutOfRange(.pushRead, field: "length", value: UInt64(length), limit: "at most \(WireLimits.pushReadBytes)")
            }
            message = .pushRead(region: region, offset: offset, length: length)
        case .rdmaKey:
            let region = try r.u32("region_id")
            let rkey = try r.u32("rkey")
            let address = try r.u64("address")
            let length = try r.u64("length")
            if length == 0 { throw .fieldOutOfRange(.rdmaKey, field: "length", value: 0, limit: "greater than 0") }
            message = .rdmaKey(region: region, rkey: rkey, address: address, length: length)
        case .goodbye:
            message = .goodbye
        case .error:
            let code = ErrorCode(rawValue: try r.u16("code"))
            try r.reserved(2, "reserved")
            let id = try r.u32("request_id")
            let text = try r.string("message", limit: WireLimits.errorMessageBytes)
            message = .error(ProtocolError(code: code, requestID: id, message: text))
        }
        try r.expectEnd()
        return message
    }
}

private func checkMaxPayload(_ type: MessageType, _ v: UInt32) throws(WireError) -> UInt32 {
    if v < WireLimits.minimumMaxPayload {
        throw .fieldOutOfRange(type, field: "max_payload", value: UInt64(v), limit: "at least \(WireLimits.minimumMaxPayload)")
    }
    return v
}

/// Exactly `n` bytes: truncated or zero-padded (fixed-size fields such as nonces).
private func fixed(_ bytes: [UInt8], _ n: Int) -> [UInt8] {
    bytes.count == n ? bytes : Array((bytes + Array(repeating: 0, count: n)).prefix(n))
}

/// A u16 length and UTF-8 bytes. Callers keep strings within the caps; longer ones are cut
/// at a character boundary rather than producing a frame the peer must reject.
private func writeString(_ w: inout ByteWriter, _ s: String, cap: Int) {
    var utf8 = Array(s.utf8)
    if utf8.count > cap {
        var cut = Substring(s)
        while cut.utf8.count > cap { cut.removeLast() }
        utf8 = Array(cut.utf8)
    }
    w.u16(UInt16(utf8.count))
    w.raw(utf8)
}
