/// How much a JSON document may hold before the reader refuses it.
public struct JSONLimits: Equatable, Sendable {
    /// The whole document, in bytes.
    public var maxBytes: Int
    /// Arrays and objects inside one another; the handoff needs 2, QMP replies a few more.
    public var maxDepth: Int

    public init(maxBytes: Int, maxDepth: Int) {
        self.maxBytes = maxBytes
        self.maxDepth = maxDepth
    }

    /// The handoff's limits: 1 MiB (far more than the 100 or so bytes per mapping that
    /// Firecracker's memory slots need) and depth 32, so recursion stays shallow whatever a
    /// peer sends.
    public static let handoff = JSONLimits(maxBytes: 1 << 20, maxDepth: 32)

    /// A daemon's status document (`pagerd status`): 16 MiB, depth 8.
    public static let status = JSONLimits(maxBytes: 16 << 20, maxDepth: 8)

    /// Numbers longer than this are refused: a u64 has 20 digits; QEMU's doubles fewer than 30.
    static let maxNumberLength = 64
}

/// Why bytes are not a JSON document, and where (a byte offset into the input).
public struct JSONError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Reason: Equatable, Sendable {
        case tooLarge(bytes: Int, limit: Int)
        case tooDeep(limit: Int)
        case unexpectedEnd
        case unexpectedByte(UInt8, expected: String)
        case trailingBytes
        case badNumber
        case numberTooLong
        case controlCharacterInString
        case badEscape
        case loneSurrogate
        case invalidUTF8
        case duplicateKey(String)
    }

    public var reason: Reason
    public var offset: Int

    public init(_ reason: Reason, offset: Int) {
        self.reason = reason
        self.offset = offset
    }

    public var description: String {
        let what: String = switch reason {
        case .tooLarge(let bytes, let limit): "document is \(bytes) bytes, limit \(limit)"
        case .tooDeep(let limit): "nested deeper than \(limit)"
        case .unexpectedEnd: "unexpected end"
        case .unexpectedByte(let b, let expected): "expected \(expected), found \(printable(b))"
        case .trailingBytes: "bytes after the end of the value"
        case .badNumber: "malformed number"
        case .numberTooLong: "number longer than \(JSONLimits.maxNumberLength) characters"
        case .controlCharacterInString: "unescaped control character in a string"
        case .badEscape: "bad escape in a string"
        case .loneSurrogate: "\\u escape is half of a UTF-16 surrogate pair"
        case .invalidUTF8: "string is not valid UTF-8"
        case .duplicateKey(let k): "duplicate key \"\(k)\""
        }
        return "invalid JSON at byte \(offset): \(what)"
    }
}

func printable(_ b: UInt8) -> String {
    b >= 0x20 && b < 0x7F ? "'\(Character(Unicode.Scalar(b)))'" : "byte 0x" + String(b, radix: 16)
}

/// A strict JSON reader (RFC 8259): one value, optional whitespace around it, nothing else.
/// It refuses what RFC 8259 does not allow (`+1`, `01`, `1.`, `'x'`, trailing commas, raw
/// control characters, lone surrogates, invalid UTF-8), and duplicate keys (so a field has one
/// meaning, not "the first" or "the last").
public struct JSONReader {
    private let bytes: [UInt8]
    private let limits: JSONLimits
    private var i = 0

    /// Parses one whole document.
    public static func parse(_ bytes: [UInt8], limits: JSONLimits = .handoff) throws(JSONError) -> JSONValue {
        guard bytes.count <= limits.maxBytes else {
            throw JSONError(.tooLarge(bytes: bytes.count, limit: limits.maxBytes), offset: limits.maxBytes)
        }
        var r = JSONReader(bytes: bytes, limits: limits)
        let v = try r.value(depth: 0)
        r.space()
        if r.i != bytes.count { throw JSONError(.trailingBytes, offset: r.i) }
        return v
    }

    private init(bytes: [UInt8], limits: JSONLimits) {
        self.bytes = bytes
        self.limits = limits
    }

    private var atEnd: Bool { i >= bytes.count }

    private mutating func space() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0A || bytes[i] == 0x0D { i += 1 }
    }

    /// The next byte after whitespace; throws at the end.
    private mutating func peek() throws(JSONError) -> UInt8 {
        space()
        guard i < bytes.count else { throw JSONError(.unexpectedEnd, offset: i) }
        return bytes[i]
    }

    private mutating func value(depth: Int) throws(JSONError) -> JSONValue {
        let c = try peek()
        switch c {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .null)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw JSONError(.unexpectedByte(c, expected: "a value"), offset: i)
        }
    }

    private mutating func object(depth: Int) throws(JSONError) -> JSONValue {
        if depth > limits.maxDepth { throw JSONError(.tooDeep(limit: limits.maxDepth), offset: i) }
        i += 1
        var members: [(String, JSONValue)] = []
        var keys = Set<String>()
        if try peek() == UInt8(ascii: "}") { i += 1; return .object(members) }
        while true {
            let c = try peek()
            guard c == UInt8(ascii: "\"") else { throw JSONError(.unexpectedByte(c, expected: "a string key"), offset: i) }
            let keyOffset = i
            let key = try string()
            guard keys.insert(key).inserted else { throw JSONError(.duplicateKey(key), offset: keyOffset) }
            let colon = try peek()
            guard colon == UInt8(ascii: ":") else { throw JSONError(.unexpectedByte(colon, expected: "':'"), offset: i) }
            i += 1
            members.append((key, try value(depth: depth)))
            let next = try peek()
            i += 1
            if next == UInt8(ascii: ",") { continue }
            if next == UInt8(ascii: "}") { return .object(members) }
            throw JSONError(.unexpectedByte(next, expected: "',' or '}'"), offset: i - 1)
        }
    }

    private mutating func array(depth: Int) throws(JSONError) -> JSONValue {
        if depth > limits.maxDepth { throw JSONError(.tooDeep(limit: limits.maxDepth), offset: i) }
        i += 1
        var items: [JSONValue] = []
        if try peek() == UInt8(ascii: "]") { i += 1; return .array(items) }
        while true {
            items.append(try value(depth: depth))
            let next = try peek()
            i += 1
            if next == UInt8(ascii: ",") { continue }
            if next == UInt8(ascii: "]") { return .array(items) }
            throw JSONError(.unexpectedByte(next, expected: "',' or ']'"), offset: i - 1)
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, kept as text.
    private mutating func number() throws(JSONError) -> JSONValue {
        let start = i
        func digits(_ r: inout JSONReader) -> Int {
            let from = r.i
            while !r.atEnd, r.bytes[r.i] >= 0x30 && r.bytes[r.i] <= 0x39 { r.i += 1 }
            return r.i - from
        }
        if bytes[i] == UInt8(ascii: "-") { i += 1 }
        if !atEnd, bytes[i] == UInt8(ascii: "0") {
            i += 1 // a leading zero stands alone: `01` is not JSON
        } else if digits(&self) == 0 {
            throw JSONError(.badNumber, offset: start)
        }
        if !atEnd, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard digits(&self) > 0 else { throw JSONError(.badNumber, offset: start) }
        }
        if !atEnd, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if !atEnd, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard digits(&self) > 0 else { throw JSONError(.badNumber, offset: start) }
        }
        guard i - start <= JSONLimits.maxNumberLength else { throw JSONError(.numberTooLong, offset: start) }
        return .number(String(decoding: bytes[start..<i], as: UTF8.self))
    }

    private mutating func string() throws(JSONError) -> String {
        let start = i
        i += 1
        var out: [UInt8] = []
        while true {
            guard i < bytes.count else { throw JSONError(.unexpectedEnd, offset: i) }
            let c = bytes[i]
            i += 1
            if c == UInt8(ascii: "\"") { break }
            if c < 0x20 { throw JSONError(.controlCharacterInString, offset: i - 1) }
            if c != UInt8(ascii: "\\") { out.append(c); continue }
            guard i < bytes.count else { throw JSONError(.unexpectedEnd, offset: i) }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "u"): out += try unicodeEscape()
            default: throw JSONError(.badEscape, offset: i - 2)
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else { throw JSONError(.invalidUTF8, offset: start) }
        return s
    }

    /// After `\u`: four hex digits, and for a high surrogate the `\uDC00`-`\uDFFF` that must follow.
    private mutating func unicodeEscape() throws(JSONError) -> [UInt8] {
        let at = i - 2
        let first = try hex4(at)
        var scalar = first
        if (0xD800...0xDBFF).contains(first) {
            guard i + 2 <= bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                throw JSONError(.loneSurrogate, offset: at)
            }
            i += 2
            let second = try hex4(at)
            guard (0xDC00...0xDFFF).contains(second) else { throw JSONError(.loneSurrogate, offset: at) }
            scalar = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        } else if (0xDC00...0xDFFF).contains(first) {
            throw JSONError(.loneSurrogate, offset: at)
        }
        guard let s = Unicode.Scalar(scalar) else { throw JSONError(.badEscape, offset: at) }
        return Array(String(Character(s)).utf8)
    }

    private mutating func hex4(_ at: Int) throws(JSONError) -> UInt32 {
        guard i + 4 <= bytes.count else { throw JSONError(.badEscape, offset: at) }
        var v: UInt32 = 0
        for b in bytes[i..<i + 4] {
            let d: UInt8
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = b - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = b - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = b - UInt8(ascii: "A") + 10
            default: throw JSONError(.badEscape, offset: at)
            }
            v = v << 4 | UInt32(d)
        }
        i += 4
        return v
    }

    private mutating func literal(_ word: String, _ v: JSONValue) throws(JSONError) -> JSONValue {
        let w = word.utf8
        guard i + w.count <= bytes.count, bytes[i..<i + w.count].elementsEqual(w) else {
            throw JSONError(.unexpectedByte(bytes[i], expected: word), offset: i)
        }
        i += w.count
        return v
    }
}
