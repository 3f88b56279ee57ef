/// Appends big-endian integers and bytes to a byte array.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    @inline(__always)
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    @inline(__always)
    public mutating func u16(_ v: UInt16) { bytes.append(UInt8(v >> 8)); bytes.append(UInt8(truncatingIfNeeded: v)) }
    @inline(__always)
    public mutating func u32(_ v: UInt32) { for s in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(s))) } }
    @inline(__always)
    public mutating func u64(_ v: UInt64) { for s in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(s))) } }
    public mutating func raw(_ v: some Collection<UInt8>) { bytes.append(contentsOf: v) }
    public mutating func zeros(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }

    /// Overwrites a big-endian u32 at `offset` (for a length known only at the end).
    mutating func patchU32(at offset: Int, _ v: UInt32) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> UInt32(24 - 8 * i)) }
    }
}

/// Reads big-endian integers from a byte buffer, never past its end: every read that
/// would overrun throws, naming the message and field, so malformed input cannot crash.
public struct ByteReader {
    public let buffer: UnsafeRawBufferPointer
    public private(set) var position: Int = 0
    /// The message being read, for error messages.
    let context: MessageType

    public init(_ buffer: UnsafeRawBufferPointer, context: MessageType) {
        self.buffer = buffer
        self.context = context
    }

    public var remaining: Int { buffer.count - position }

    @inline(__always)
    mutating func need(_ n: Int, _ field: StaticString) throws(WireError) {
        if n > remaining { throw .truncatedPayload(context, field: "\(field)", needed: position + n, length: buffer.count) }
    }

    @inline(__always)
    public mutating func u8(_ field: StaticString) throws(WireError) -> UInt8 {
        try need(1, field)
        defer { position += 1 }
        return buffer[position]
    }

    @inline(__always)
    public mutating func u16(_ field: StaticString) throws(WireError) -> UInt16 {
        try need(2, field)
        defer { position += 2 }
        return UInt16(bigEndian: buffer.loadUnaligned(fromByteOffset: position, as: UInt16.self))
    }

    @inline(__always)
    public mutating func u32(_ field: StaticString) throws(WireError) -> UInt32 {
        try need(4, field)
        defer { position += 4 }
        return UInt32(bigEndian: buffer.loadUnaligned(fromByteOffset: position, as: UInt32.self))
    }

    @inline(__always)
    public mutating func u64(_ field: StaticString) throws(WireError) -> UInt64 {
        try need(8, field)
        defer { position += 8 }
        return UInt64(bigEndian: buffer.loadUnaligned(fromByteOffset: position, as: UInt64.self))
    }

    public mutating func bytes(_ n: Int, _ field: StaticString) throws(WireError) -> [UInt8] {
        try need(n, field)
        defer { position += n }
        return Array(buffer[position..<position + n])
    }

    /// Skips `n` bytes that must be zero (reserved fields).
    public mutating func reserved(_ n: Int, _ field: StaticString) throws(WireError) {
        try need(n, field)
        for i in position..<position + n where buffer[i] != 0 {
            throw .reservedNotZero(context, field: "\(field)")
        }
        position += n
    }

    /// A UTF-8 string of at most `limit` bytes, preceded by a u16 length.
    public mutating func string(_ field: StaticString, limit: Int) throws(WireError) -> String {
        let n = Int(try u16(field))
        if n > limit { throw .fieldOutOfRange(context, field: "\(field) length", value: UInt64(n), limit: "at most \(limit) bytes") }
        let raw = try bytes(n, field)
        guard let s = String(validating: raw, as: UTF8.self) else { throw .invalidUTF8(context, field: "\(field)") }
        return s
    }

    /// Throws unless every byte was consumed: trailing garbage is malformed.
    public func expectEnd() throws(WireError) {
        if remaining != 0 { throw .trailingBytes(context, count: remaining) }
    }
}
