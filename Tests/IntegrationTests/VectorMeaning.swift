/// A `meaning:` line of valid.hex (spec §8) turned into the dissector fields it must give:
/// each key of each message type names one field (`pager.<message>.<field>`), and values
/// are compared as numbers, bytes, strings or lists, whatever spelling tshark uses.
struct VectorMeaning {
    var type: String
    /// field -> expected values (one per occurrence), normalized by ``normalize(_:)``.
    var expected: [String: [String]] = [:]

    enum Kind { case number, bytes, string, names([String: UInt64]), ranges, list }

    static let flagNames: [String: [String: UInt64]] = [
        "PAGE_REQUEST": ["urgent": 1, "prefetch": 2], "PAGE_DATA": ["urgent": 1, "push": 2, "checksums": 4],
        "RECEIVED": ["more": 1, "staged": 2], "REGION": ["live": 1],
    ]
    static let keys: [String: [String: (String, Kind)]] = [
        "HELLO": ["min-version": ("hello.min_version", .number), "max-version": ("hello.max_version", .number),
                  "features": ("hello.features", .number), "max-payload": ("hello.max_payload", .number),
                  "channel": ("hello.channel", .names(["demand": 0, "push": 1])), "resume-session": ("hello.resume_session", .number),
                  "resume-token": ("hello.resume_token", .bytes), "client": ("hello.client_name", .string),
                  "key-identity": ("hello.key_identity", .string)],
        "WELCOME": ["version": ("welcome.version", .number), "features": ("welcome.features", .number),
                    "max-payload": ("welcome.max_payload", .number), "regions": ("welcome.region_count", .number),
                    "session": ("welcome.session_id", .number), "resume-token": ("welcome.resume_token", .bytes)],
        "AUTH_CHALLENGE": ["nonce": ("challenge.server_nonce", .bytes), "share": ("challenge.server_share", .bytes)],
        "AUTH_RESPONSE": ["client-nonce": ("response.client_nonce", .bytes), "share": ("response.client_share", .bytes), "mac": ("response.mac", .bytes)],
        "AUTH_CONFIRM": ["mac": ("confirm.mac", .bytes)],
        "REGION": ["id": ("region.region_id", .number), "page-shift": ("region.page_shift", .number),
                   "flags": ("region.flags", .names(flagNames["REGION"]!)), "length": ("region.length", .number), "name": ("region.name", .string)],
        "PAGE_REQUEST": ["flags": ("flags", .names(flagNames["PAGE_REQUEST"]!)), "request": ("request.request_id", .number),
                         "region": ("request.region_id", .number), "offset": ("request.offset", .number), "length": ("request.length", .number)],
        "PAGE_DATA": ["flags": ("flags", .names(flagNames["PAGE_DATA"]!)), "request": ("data.request_id", .number),
                      "region": ("data.region_id", .number), "offset": ("data.offset", .number), "length": ("data.length", .number),
                      "encoding": ("data.encoding", .names(["raw": 0, "zero": 1, "compressed": 2, "sparse": 3])), "checksums": ("data.checksum", .list),
                      "page-map": ("data.page_map", .list),
                      "data-bytes": ("data.data_length", .number), "data-crc32c": ("data.data_crc32c", .number)],
        "INVALIDATE": ["sequence": ("invalidate.sequence", .number), "region": ("invalidate.region_id", .number), "ranges": ("range", .ranges)],
        "INVALIDATE_ACK": ["sequence": ("invalidate_ack.sequence", .number), "region": ("invalidate_ack.region_id", .number)],
        "SWITCHED": ["region": ("switched.region_id", .number), "last-sequence": ("switched.last_sequence", .number)],
        "RECEIVED": ["flags": ("flags", .names(flagNames["RECEIVED"]!)), "region": ("received.region_id", .number), "ranges": ("range", .ranges)],
        "PUSH_COMPLETE": ["region": ("push_complete.region_id", .number), "bytes": ("push_complete.bytes", .number)],
        "COMPLETE": ["region": ("complete.region_id", .number), "resident-bytes": ("complete.resident_bytes", .number)],
        "COMPLETE_ACK": ["region": ("complete_ack.region_id", .number)],
        "PING": ["token": ("ping.token", .number), "timestamp": ("ping.timestamp", .number)],
        "PONG": ["token": ("pong.token", .number), "timestamp": ("pong.timestamp", .number)],
        "PUSH_READ": ["region": ("push_read.region_id", .number), "offset": ("push_read.offset", .number),
                      "length": ("push_read.length", .number)],
        "RDMA_KEY": ["region": ("rdma_key.region_id", .number), "rkey": ("rdma_key.rkey", .number),
                     "address": ("rdma_key.address", .number), "length": ("rdma_key.length", .number)],
        "GOODBYE": [:],
        "ERROR": ["code": ("error.code", .names(["malformed-frame": 1, "unsupported-version": 2, "unknown-region": 3])),
                  "request": ("error.request_id", .number), "message": ("error.message", .string)],
    ]
    static let typeCodes: [String: UInt64] = [
        "HELLO": 0x01, "WELCOME": 0x02, "AUTH_CHALLENGE": 0x03, "AUTH_RESPONSE": 0x04, "AUTH_CONFIRM": 0x05, "REGION": 0x10,
        "PAGE_REQUEST": 0x20, "PAGE_DATA": 0x21, "INVALIDATE": 0x30, "INVALIDATE_ACK": 0x31, "SWITCHED": 0x32,
        "PUSH_COMPLETE": 0x40, "COMPLETE": 0x41, "COMPLETE_ACK": 0x42, "RECEIVED": 0x43, "PUSH_READ": 0x44, "PING": 0x50, "PONG": 0x51,
        "RDMA_KEY": 0x60, "GOODBYE": 0x7e, "ERROR": 0x7f,
    ]
    /// Every field any meaning names, with the header's type.
    static var allFields: [String] {
        var set: Set<String> = ["pager.type", "pager.flags", "pager.range.offset", "pager.range.length"]
        for (_, m) in keys { for (_, (f, kind)) in m { if case .ranges = kind { continue }; set.insert("pager." + f) } }
        return set.sorted()
    }

    init(_ line: String) throws {
        let tokens = VectorMeaning.tokens(line)
        type = tokens[0]
        guard let map = VectorMeaning.keys[type] else { throw HarnessError("no field map for \(type)") }
        expected["pager.type"] = [String(VectorMeaning.typeCodes[type]!)]
        for token in tokens.dropFirst() {
            let eq = token.firstIndex(of: "=")!
            let key = String(token[..<eq]), value = String(token[token.index(after: eq)...])
            guard let (field, kind) = map[key] else { throw HarnessError("\(type): no field for key \(key)") }
            switch kind {
            case .number: expected["pager." + field] = [VectorMeaning.normalize(value == "all" ? "0xffffffff" : value)]
            case .bytes: expected["pager." + field] = [value]
            case .string: expected["pager." + field] = [String(value.dropFirst().dropLast())]
            case .names(let names):
                let n = value == "-" ? 0 : value.split(separator: "|").reduce(UInt64(0)) { $0 | names[String($1)]! }
                expected["pager." + field] = [String(n)]
            case .list:
                expected["pager." + field] = value.dropFirst().dropLast().split(separator: ",").map { VectorMeaning.normalize(String($0)) }
            case .ranges:
                let pairs = value.dropFirst().dropLast().split(separator: ",").map { $0.split(separator: "+").map { VectorMeaning.normalize(String($0)) } }
                expected["pager.range.offset"] = pairs.map { $0[0] }
                expected["pager.range.length"] = pairs.map { $0[1] }
            }
        }
    }

    /// "0x0000000000200000", "2097152" and "0x200000" all become "2097152"; anything else is kept.
    static func normalize(_ value: String) -> String {
        if value.hasPrefix("0x"), let n = UInt64(value.dropFirst(2), radix: 16) { return String(n) }
        return value
    }

    /// Splits on spaces outside double quotes.
    static func tokens(_ line: String) -> [String] {
        var out: [String] = [], current = "", quoted = false
        for c in line {
            if c == "\"" { quoted.toggle() }
            if c == " " && !quoted {
                if !current.isEmpty { out.append(current) }
                current = ""
            } else { current.append(c) }
        }
        if !current.isEmpty { out.append(current) }
        return out
    }
}
