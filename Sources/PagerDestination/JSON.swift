/// A small, strict JSON reader for the handoff message (RFC 8259 values; numbers kept as
/// text so 64-bit addresses lose no precision). Depth and size are bounded by the caller's
/// buffer; nesting deeper than 32 is refused.
public enum JSONValue: Equatable, Sendable {
    case object([(String, JSONValue)])
    case array([JSONValue])
    case string(String)
    case number(String)
    case bool(Bool)
    case null

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.object(let x), .object(let y)): x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case (.array(let x), .array(let y)): x == y
        case (.string(let x), .string(let y)), (.number(let x), .number(let y)): x == y
        case (.bool(let x), .bool(let y)): x == y
        case (.null, .null): true
        default: false
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members.first { $0.0 == key }?.1 }
        return nil
    }

    public var uint64: UInt64? {
        if case .number(let text) = self { return UInt64(text) }
        return nil
    }
}

public struct JSONError: Error, CustomStringConvertible {
    public var message: String
    public var offset: Int
    public var description: String { "invalid JSON at byte \(offset): \(message)" }
}

public struct JSONReader {
    private let bytes: [UInt8]
    private var i = 0

    /// Parses one whole document; trailing non-space bytes are an error.
    public static func parse(_ bytes: [UInt8]) throws(JSONError) -> JSONValue {
        var r = JSONReader(bytes: bytes)
        let v = try r.value(depth: 0)
        r.space()
        if r.i != bytes.count { throw JSONError(message: "trailing bytes", offset: r.i) }
        return v
    }

    private init(bytes: [UInt8]) { self.bytes = bytes }

    private mutating func space() {
        while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 }
    }

    private mutating func expect(_ c: UInt8) throws(JSONError) {
        space()
        guard i < bytes.count, bytes[i] == c else { throw JSONError(message: "expected '\(Character(Unicode.Scalar(c)))'", offset: i) }
        i += 1
    }

    private mutating func value(depth: Int) throws(JSONError) -> JSONValue {
        if depth > 32 { throw JSONError(message: "nested too deeply", offset: i) }
        space()
        guard i < bytes.count else { throw JSONError(message: "unexpected end", offset: i) }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            i += 1
            var members: [(String, JSONValue)] = []
            space()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
            while true {
                space()
                guard case .string(let key) = try value(depth: depth + 1) else { throw JSONError(message: "object keys are strings", offset: i) }
                try expect(UInt8(ascii: ":"))
                members.append((key, try value(depth: depth + 1)))
                space()
                guard i < bytes.count else { throw JSONError(message: "unterminated object", offset: i) }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                throw JSONError(message: "expected ',' or '}'", offset: i)
            }
        case UInt8(ascii: "["):
            i += 1
            var items: [JSONValue] = []
            space()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            while true {
                items.append(try value(depth: depth + 1))
                space()
                guard i < bytes.count else { throw JSONError(message: "unterminated array", offset: i) }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                throw JSONError(message: "expected ',' or ']'", offset: i)
            }
        case UInt8(ascii: "\""):
            i += 1
            var out: [UInt8] = []
            while true {
                guard i < bytes.count else { throw JSONError(message: "unterminated string", offset: i) }
                let c = bytes[i]
                i += 1
                if c == UInt8(ascii: "\"") { break }
                if c < 0x20 { throw JSONError(message: "control character in string", offset: i - 1) }
                if c == UInt8(ascii: "\\") {
                    guard i < bytes.count else { throw JSONError(message: "unterminated escape", offset: i) }
                    let e = bytes[i]
                    i += 1
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "u"):
                        guard i + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[i..<i + 4], as: UTF8.self), radix: 16),
                              let scalar = Unicode.Scalar(v) else { throw JSONError(message: "bad \\u escape", offset: i) }
                        out.append(contentsOf: Array(String(Character(scalar)).utf8))
                        i += 4
                    default: throw JSONError(message: "bad escape", offset: i - 1)
                    }
                } else {
                    out.append(c)
                }
            }
            guard let s = String(validating: out, as: UTF8.self) else { throw JSONError(message: "string is not UTF-8", offset: i) }
            return .string(s)
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .null)
        default:
            let start = i
            while i < bytes.count, (bytes[i] >= 0x30 && bytes[i] <= 0x39) || [UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E")].contains(bytes[i]) {
                i += 1
            }
            guard i > start, i - start <= 40 else { throw JSONError(message: "expected a value", offset: start) }
            return .number(String(decoding: bytes[start..<i], as: UTF8.self))
        }
    }

    private mutating func literal(_ word: String, _ v: JSONValue) throws(JSONError) -> JSONValue {
        let w = Array(word.utf8)
        guard i + w.count <= bytes.count, Array(bytes[i..<i + w.count]) == w else { throw JSONError(message: "expected \(word)", offset: i) }
        i += w.count
        return v
    }
}
