// The key ring: the pre-shared keys from a key file in QEMU's TLS-PSK format (`keys.psk`),
// so that one file serves QEMU's `tls-creds-psk` and the pager. Pure: the file is read by
// PagerKernel's `readSecretFile`, with its permission checks, and handed here as bytes.
//
// The format, as QEMU and GnuTLS read it (QEMU crypto/tlscredspsk.c `lookup_key` on the
// client side; GnuTLS lib/auth/psk_passwd.c on the server side; `psktool` writes it):
//
//   identity:hexkey\n          one key a line; the identity is everything before the first
//                              ':', the key everything after it up to the end of the line
//
// What both readers accept, and what this parser therefore accepts:
//   - hex digits in either case (GnuTLS `hex_decode`: 0-9, a-f, A-F, even count);
//   - empty lines, and lines of spaces and tabs only (neither reader matches them);
//   - a last line without '\n'.
// What one of them would misread, and this parser refuses rather than guess:
//   - a carriage return (DOS line endings): QEMU passes the rest of the line, '\r' included,
//     to GnuTLS's hex decoder, which fails; GnuTLS's server side strips only one '\n' or ' ';
//   - anything after the key (trailing spaces, a comment): QEMU's client reads it as key;
//   - a line beginning with '#': not a comment (the format has none) but, to GnuTLS's
//     server, an identity written in hex (`#7061676572` is `pager`), which QEMU's client
//     side does not decode: the same line would name two different identities.
// And the pager's own rules, stricter than QEMU's (which takes the first match silently):
//   keys of at least 32 bytes, identities of 1...64 bytes of UTF-8 without ':' or control
//   characters, no identity twice, at least one key.

/// One pre-shared key: the identity a client names and the secret both sides hold.
///
/// `description`, `debugDescription` and the mirror (`dump`) show the identity and the
/// key's length, never its bytes.
public struct PresharedKey: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The name sent in the clear so the server can find the key (QEMU's `username`).
    public let identity: String
    /// The key bytes (at least ``KeyRing/minimumKeyBytes``).
    public let secret: [UInt8]

    /// A key checked against the same rules as a line of the file (`line` is nil in the error).
    public init(identity: String, secret: [UInt8]) throws(KeyFileError) {
        if let reason = KeyRing.identityProblem(Array(identity.utf8)) { throw KeyFileError(reason) }
        if secret.count < KeyRing.minimumKeyBytes { throw KeyFileError(.keyTooShort(bytes: secret.count)) }
        self.identity = identity
        self.secret = secret
    }

    /// For the parser, which has checked both already.
    init(checkedIdentity identity: String, secret: [UInt8]) {
        self.identity = identity
        self.secret = secret
    }

    public var description: String { "PresharedKey(identity: \"\(identity)\", \(secret.count) bytes)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["identity": identity, "bytes": secret.count]) }
}

/// The keys of a key file, in file order: a client sends the ``primary`` one; a server
/// accepts any of them (so during a rotation the old and the new key both work).
public struct KeyRing: Sendable, CustomStringConvertible {
    /// 32 bytes: the HMAC-SHA256 key size; shorter pre-shared keys are refused.
    public static let minimumKeyBytes = 32
    /// 64 bytes of UTF-8: far more than a name needs, little enough to print in a message.
    public static let maximumIdentityBytes = 64

    /// File order; never empty.
    public let keys: [PresharedKey]

    /// A ring from keys made in code (``PresharedKey/init(identity:secret:)`` checked each):
    /// refuses an empty list and a repeated identity, naming entries as lines of
    /// ``formatted(_:)``'s output (entry 0 is line 1).
    public init(keys: [PresharedKey]) throws(KeyFileError) {
        guard !keys.isEmpty else { throw KeyFileError(.noKeys) }
        for (i, key) in keys.enumerated() {
            if let first = keys[..<i].firstIndex(where: { $0.identity.utf8.elementsEqual(key.identity.utf8) }) {
                throw KeyFileError(.duplicateIdentity(key.identity, firstLine: first + 1), line: i + 1)
            }
        }
        self.keys = keys
    }

    /// Parses a key file's bytes. Errors name the line (1-based) and the reason, never key bytes.
    public init(parsing text: [UInt8]) throws(KeyFileError) {
        var keys: [PresharedKey] = []
        var lines: [Int] = []   // the line each key came from, for the duplicate message
        var lineNumber = 0
        var start = 0
        while start < text.count {
            let end = text[start...].firstIndex(of: UInt8(ascii: "\n")) ?? text.count
            lineNumber += 1
            defer { start = end + 1 }
            guard let key = try Self.parseLine(text[start..<end], line: lineNumber) else { continue }
            if let first = keys.firstIndex(where: { $0.identity.utf8.elementsEqual(key.identity.utf8) }) {
                throw KeyFileError(.duplicateIdentity(key.identity, firstLine: lines[first]), line: lineNumber)
            }
            keys.append(key)
            lines.append(lineNumber)
        }
        try self.init(keys: keys)
    }

    /// The key named `identity` (compared byte for byte, as GnuTLS does), or nil.
    public func key(identity: String) -> PresharedKey? {
        keys.first { $0.identity.utf8.elementsEqual(identity.utf8) }
    }

    /// The first key: the one a client sends. ``init(keys:)`` guarantees there is one.
    public var primary: PresharedKey { keys[0] }

    /// The file text for `keys` (what `pagerd keygen` writes): `identity:hexkey\n` a key,
    /// lowercase hex as `psktool` writes it. Keys made by ``PresharedKey/init(identity:secret:)``
    /// always parse back; this does not check for repeated identities (``init(keys:)`` does).
    public static func formatted(_ keys: [PresharedKey]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(keys.reduce(0) { $0 + $1.identity.utf8.count + 2 * $1.secret.count + 2 })
        let digits = Array("0123456789abcdef".utf8)
        for key in keys {
            out.append(contentsOf: key.identity.utf8)
            out.append(UInt8(ascii: ":"))
            for byte in key.secret {
                out.append(digits[Int(byte >> 4)])
                out.append(digits[Int(byte & 0xF)])
            }
            out.append(UInt8(ascii: "\n"))
        }
        return out
    }

    public var description: String {
        "KeyRing(\(keys.count) key\(keys.count == 1 ? "" : "s"): \(keys.map(\.identity).joined(separator: ", ")))"
    }
}

// MARK: - One line

extension KeyRing {
    /// The key on one line (without its '\n'), nil for a blank line.
    static func parseLine(_ line: ArraySlice<UInt8>, line number: Int) throws(KeyFileError) -> PresharedKey? {
        // A carriage return anywhere first: in a DOS-format file every line has one, and
        // the reason "not a hex digit" would hide the real cause.
        if line.contains(UInt8(ascii: "\r")) { throw KeyFileError(.carriageReturn, line: number) }
        if line.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }) { return nil }
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { throw KeyFileError(.noSeparator, line: number) }
        let identityBytes = Array(line[..<colon])
        if let reason = identityProblem(identityBytes) { throw KeyFileError(reason, line: number) }
        let secret = try decodeHex(line[(colon + 1)...], line: number)
        if secret.count < minimumKeyBytes { throw KeyFileError(.keyTooShort(bytes: secret.count), line: number) }
        // identityProblem has checked the bytes are UTF-8.
        return PresharedKey(checkedIdentity: String(decoding: identityBytes, as: UTF8.self), secret: secret)
    }

    /// Why `bytes` cannot be an identity, or nil if it can.
    static func identityProblem(_ bytes: [UInt8]) -> KeyFileError.Reason? {
        if bytes.isEmpty { return .emptyIdentity }
        if bytes.count > maximumIdentityBytes { return .identityTooLong(bytes: bytes.count) }
        if bytes.contains(UInt8(ascii: ":")) { return .identityHasColon }
        guard let text = String(validating: bytes, as: UTF8.self) else { return .identityNotUTF8 }
        if bytes[0] == UInt8(ascii: "#") { return .identityStartsWithHash }
        // Control and format characters (a NUL, a tab, a byte order mark) would make the same
        // name print alike and compare unlike.
        for scalar in text.unicodeScalars {
            switch scalar.properties.generalCategory {
            case .control, .format: return .identityHasControlCharacter
            default: continue
            }
        }
        if text.unicodeScalars.first!.properties.isWhitespace || text.unicodeScalars.last!.properties.isWhitespace {
            return .identitySurroundedBySpace
        }
        return nil
    }

    /// The bytes of a hex string: an even number of digits of either case, nothing else.
    /// Digits are decoded with arithmetic rather than a table or branches on their value:
    /// they are key material.
    static func decodeHex(_ hex: ArraySlice<UInt8>, line: Int) throws(KeyFileError) -> [UInt8] {
        if hex.isEmpty { throw KeyFileError(.emptyKey, line: line) }
        for (offset, c) in hex.enumerated() where nibble(c) < 0 {
            let found: KeyFileError.NonHex = switch c {
            case UInt8(ascii: " "): .space
            case UInt8(ascii: "\t"): .tab
            case UInt8(ascii: ":"): .colon
            default: .other
            }
            throw KeyFileError(.notHex(digit: offset + 1, found: found), line: line)
        }
        if hex.count % 2 != 0 { throw KeyFileError(.oddDigitCount(hex.count), line: line) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(hex.count / 2)
        var i = hex.startIndex
        while i < hex.endIndex {
            bytes.append(UInt8(nibble(hex[i]) << 4 | nibble(hex[i + 1])))
            i += 2
        }
        return bytes
    }

    /// The value of hex digit `c` (0...15), or -1. `(~x & (x - n)) >> 63` is all ones
    /// exactly when 0 <= x < n.
    @inline(__always)
    static func nibble(_ c: UInt8) -> Int {
        let digit = Int(c) - 0x30                    // '0'...'9'
        let letter = (Int(c) | 0x20) - 0x61          // 'a'...'f' and 'A'...'F'
        let isDigit = (~digit & (digit - 10)) >> 63
        let isLetter = (~letter & (letter - 6)) >> 63
        return (digit & isDigit) | ((letter + 10) & isLetter) | ~(isDigit | isLetter)
    }
}

// MARK: - Errors

/// Why a key file (or a key made in code) was refused: the reason, the line, and the file's
/// path once the loader adds it. Never contains key material.
public struct KeyFileError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What was wrong.
    public enum Reason: Sendable, Equatable, CustomStringConvertible {
        /// No `identity:key` line at all (an empty file, or blank lines only).
        case noKeys
        /// A line with no ':' between identity and key.
        case noSeparator
        /// A '\r' in the line: DOS line endings.
        case carriageReturn
        /// Nothing before the ':'.
        case emptyIdentity
        /// More than ``KeyRing/maximumIdentityBytes`` bytes.
        case identityTooLong(bytes: Int)
        /// A ':' in an identity made in code (in the file, the first ':' ends the identity).
        case identityHasColon
        /// Not valid UTF-8.
        case identityNotUTF8
        /// A control or format character (NUL, tab, byte order mark, ...).
        case identityHasControlCharacter
        /// Leading or trailing white space, which QEMU would keep as part of the name.
        case identitySurroundedBySpace
        /// A leading '#': GnuTLS reads the rest as the identity in hex.
        case identityStartsWithHash
        /// Nothing after the ':'.
        case emptyKey
        /// The key's `digit`-th character (1-based, after the ':') is not a hex digit.
        case notHex(digit: Int, found: NonHex)
        /// An odd number of hex digits.
        case oddDigitCount(Int)
        /// Fewer than ``KeyRing/minimumKeyBytes`` bytes.
        case keyTooShort(bytes: Int)
        /// The identity was already given, on `firstLine`.
        case duplicateIdentity(String, firstLine: Int)

        public var description: String {
            switch self {
            case .noKeys: "no keys: the file holds no identity:hexkey line"
            case .noSeparator: "no ':' between identity and key (each line is identity:hexkey)"
            case .carriageReturn: "carriage return (DOS line ending): QEMU would read it as part of the key; convert the file with dos2unix"
            case .emptyIdentity: "empty identity before the ':'"
            case .identityTooLong(let n): "identity is \(n) bytes; at most \(KeyRing.maximumIdentityBytes)"
            case .identityHasColon: "identity contains ':', which ends the identity in the file"
            case .identityNotUTF8: "identity is not valid UTF-8"
            case .identityHasControlCharacter: "identity contains a control character"
            case .identitySurroundedBySpace: "identity begins or ends with white space (QEMU would keep it as part of the name)"
            case .identityStartsWithHash: "identity begins with '#': the format has no comments, and GnuTLS would read the rest as a hex-encoded identity"
            case .emptyKey: "no key after the ':'"
            case .notHex(let digit, let found): "key character \(digit) is \(found), not a hex digit (nothing may follow the key on its line)"
            case .oddDigitCount(let n): "key has an odd number of hex digits (\(n))"
            case .keyTooShort(let n): "key is \(n) bytes; at least \(KeyRing.minimumKeyBytes) (\(2 * KeyRing.minimumKeyBytes) hex digits) are needed"
            case .duplicateIdentity(let identity, let first): "identity \"\(identity)\" already used on line \(first)"
            }
        }
    }

    /// What stood where a hex digit should have: named, never shown (it may be part of a key).
    public enum NonHex: Sendable, Equatable, CustomStringConvertible {
        case space, tab, colon, other
        public var description: String {
            switch self {
            case .space: "a space"
            case .tab: "a tab"
            case .colon: "a second ':'"
            case .other: "a character"
            }
        }
    }

    public var reason: Reason
    /// The line (1-based), nil for the file as a whole or a key made in code.
    public var line: Int?
    /// The file, added by whoever read it.
    public var path: String?

    public init(_ reason: Reason, line: Int? = nil, path: String? = nil) {
        self.reason = reason
        self.line = line
        self.path = path
    }

    public var description: String {
        (path.map { "key file \($0): " } ?? "") + (line.map { "line \($0): " } ?? "") + reason.description
    }
}
