/// One JSON value (RFC 8259). Numbers keep their text, so a 64-bit address never passes
/// through `Double` (which holds integers exactly only up to 2^53); objects keep their
/// members in the order they came, so a value writes back as it was read.
public enum JSONValue: Equatable, Sendable {
    case object([(String, JSONValue)])
    case array([JSONValue])
    case string(String)
    /// The number's text exactly as the grammar accepted it (`-12`, `0.5`, `4096e0`).
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

    /// A number holding `value` exactly.
    public static func unsigned(_ value: UInt64) -> JSONValue { .number(String(value)) }

    /// The member named `key` of an object (the reader refuses duplicate keys, so there is at
    /// most one); nil for other values.
    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members.first { $0.0 == key }?.1 }
        return nil
    }

    /// The value as an exact unsigned 64-bit integer, or why it is not one.
    public var unsignedInteger: Result<UInt64, IntegerProblem> {
        guard case .number(let text) = self else { return .failure(.notANumber) }
        let digits = Array(text.utf8)
        if digits.first == UInt8(ascii: "-") { return .failure(.negative) }
        // The reader checked the grammar: anything but digits is a fraction or an exponent.
        // `4096.0` and `4096e0` are refused like Firecracker's serde (u64 takes integers only).
        guard digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return .failure(.fractional) }
        guard let value = UInt64(text) else { return .failure(.overflow) }
        return .success(value)
    }

    /// The value as an exact unsigned 64-bit integer; nil for anything else.
    public var uint64: UInt64? { try? unsignedInteger.get() }

    /// The text of a string value.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The kind of value, for messages ("expected a number, found an object").
    public var kind: String {
        switch self {
        case .object: "an object"
        case .array: "an array"
        case .string: "a string"
        case .number: "a number"
        case .bool: "a boolean"
        case .null: "null"
        }
    }
}

/// Why a JSON value is not an exact unsigned 64-bit integer.
public enum IntegerProblem: Error, Equatable, Sendable, CustomStringConvertible {
    case notANumber
    case negative
    case fractional
    case overflow

    public var description: String {
        switch self {
        case .notANumber: "is not a number"
        case .negative: "is negative"
        case .fractional: "has a fraction or an exponent (integers only)"
        case .overflow: "does not fit in 64 bits"
        }
    }
}
