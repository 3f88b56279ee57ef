// The canonical one-line form of a message, used in logs and in the test vectors of
// Protocols/vectors (where an independent encoder prints the same form): the type name,
// then `key=value` fields in wire order. Numbers that are addresses, sizes or masks are
// lowercase hex; ids and counts are decimal; byte strings are lowercase hex; page bytes
// are summarised by their CRC32C.

extension Message: CustomStringConvertible {
    public var description: String {
        var f: [String] = [type.description]
        func add(_ key: String, _ value: String) { f.append("\(key)=\(value)") }
        switch self {
        case .hello(let h):
            add("min-version", "\(h.minVersion)")
            add("max-version", "\(h.maxVersion)")
            add("features", hex64(h.features.rawValue))
            add("max-payload", hex64(UInt64(h.maxPayload)))
            add("channel", "\(h.channel)")
            add("resume-session", hex64(h.resumeSession))
            add("resume-token", hexBytes(h.resumeToken))
            add("client", quoted(h.clientName))
            add("key-identity", quoted(h.keyIdentity))
        case .welcome(let m):
            add("version", "\(m.version)")
            add("features", hex64(m.features.rawValue))
            add("max-payload", hex64(UInt64(m.maxPayload)))
            add("regions", "\(m.regionCount)")
            add("session", hex64(m.session))
            add("resume-token", hexBytes(m.resumeToken))
        case .authChallenge(let nonce, let share):
            add("nonce", hexBytes(nonce))
            add("share", hexBytes(share))
        case .authResponse(let clientNonce, let share, let mac):
            add("client-nonce", hexBytes(clientNonce))
            add("share", hexBytes(share))
            add("mac", hexBytes(mac))
        case .authConfirm(let mac):
            add("mac", hexBytes(mac))
        case .region(let r):
            add("id", "\(r.id)")
            add("page-shift", "\(r.pageShift)")
            add("flags", r.flags.contains(.live) ? "live" : "-")
            add("length", hex64(r.length))
            add("name", quoted(r.name))
        case .pageRequest(let p):
            add("flags", flagList([(p.flags.contains(.urgent), "urgent"), (p.flags.contains(.prefetch), "prefetch")]))
            add("request", "\(p.requestID)")
            add("region", "\(p.region)")
            add("offset", hex64(p.offset))
            add("length", hex64(p.length))
        case .pageData(let d):
            let h = d.header
            add("flags", flagList([(h.flags.contains(.urgent), "urgent"), (h.flags.contains(.push), "push"),
                                   (h.flags.contains(.checksums), "checksums")]))
            add("request", "\(h.requestID)")
            add("region", "\(h.region)")
            add("offset", hex64(h.offset))
            add("length", hex64(h.length))
            add("encoding", ["raw", "zero", "compressed", "sparse"][Int(h.encoding.rawValue)])
            if let map = h.pageMap { add("page-map", "[" + map.map { hex64($0) }.joined(separator: ",") + "]") }
            if let checksums = d.checksums { add("checksums", "[" + checksums.map { hex32($0) }.joined(separator: ",") + "]") }
            if h.encoding != .zero {
                add("data-bytes", "\(d.data.count)")
                add("data-crc32c", hex32(CRC32C.checksum(d.data)))
            }
        case .invalidate(let inv):
            add("sequence", "\(inv.sequence)")
            add("region", "\(inv.region)")
            add("ranges", "[" + inv.ranges.map { "\(hex64($0.offset))+\(hex64($0.length))" }.joined(separator: ",") + "]")
        case .invalidateAck(let sequence, let region):
            add("sequence", "\(sequence)")
            add("region", "\(region)")
        case .received(let m):
            let flags = [m.more ? "more" : nil, m.staged ? "staged" : nil].compactMap { $0 }
            add("flags", flags.isEmpty ? "-" : flags.joined(separator: "|"))
            add("region", "\(m.region)")
            add("ranges", "[" + m.ranges.map { "\(hex64($0.offset))+\(hex64($0.length))" }.joined(separator: ",") + "]")
        case .switched(let region, let lastSequence):
            add("region", "\(region)")
            add("last-sequence", "\(lastSequence)")
        case .pushComplete(let region, let bytes):
            add("region", "\(region)")
            add("bytes", hex64(bytes))
        case .complete(let region, let resident):
            add("region", region == Message.allRegions ? "all" : "\(region)")
            add("resident-bytes", hex64(resident))
        case .completeAck(let region):
            add("region", region == Message.allRegions ? "all" : "\(region)")
        case .ping(let token, let timestamp), .pong(let token, let timestamp):
            add("token", hex64(token))
            add("timestamp", hex64(timestamp))
        case .pushRead(let region, let offset, let length):
            add("region", "\(region)")
            add("offset", hex64(offset))
            add("length", hex64(UInt64(length)))
        case .rdmaKey(let region, let rkey, let address, let length):
            add("region", "\(region)")
            add("rkey", hex32(rkey))
            add("address", hex64(address))
            add("length", hex64(length))
        case .goodbye:
            break
        case .error(let e):
            add("code", e.code.description)
            add("request", "\(e.requestID)")
            add("message", quoted(e.message))
        }
        return f.joined(separator: " ")
    }
}

/// The names of the flags that are set, joined with `|`, or `-` for none.
func flagList(_ flags: [(isSet: Bool, name: String)]) -> String {
    let names = flags.filter(\.isSet).map(\.name)
    return names.isEmpty ? "-" : names.joined(separator: "|")
}

func hexBytes(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0xF)])
    }
    return String(decoding: out, as: UTF8.self)
}

func quoted(_ s: String) -> String { "\"" + s + "\"" }
