@testable import PagerTrust
import Testing

/// 32 bytes 0x00...0x1f and its hex, 0x20...0x3f, and 0x40...0x6f (48 bytes).
private let secretA = (0..<32).map { UInt8($0) }
private let secretB = (32..<64).map { UInt8($0) }
private let secretC = (64..<112).map { UInt8($0) }
private func hex(_ bytes: [UInt8]) -> String {
    bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}
private let hexA = hex(secretA)
private let hexB = hex(secretB)

private func parse(_ text: String) throws(KeyFileError) -> KeyRing { try KeyRing(parsing: Array(text.utf8)) }

/// The error parsing `text` throws (an issue if it parses).
private func refusal(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> KeyFileError? {
    refusal(Array(text.utf8), sourceLocation: sourceLocation)
}
private func refusal(_ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) -> KeyFileError? {
    do {
        let ring = try KeyRing(parsing: bytes)
        Issue.record("parsed as \(ring)", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

@Suite("KeyRing: QEMU's keys.psk format")
struct KeyRingTests {
    // MARK: Files that parse

    @Test("one key, as psktool and keygen write it")
    func oneKey() throws {
        let ring = try parse("pager:\(hexA)\n")
        #expect(ring.keys.count == 1)
        #expect(ring.primary.identity == "pager")
        #expect(ring.primary.secret == secretA)
        #expect(ring.key(identity: "pager")?.secret == secretA)
        #expect(ring.key(identity: "other") == nil)
    }

    @Test("several keys keep file order; the first is primary; longer keys and upper-case hex parse")
    func severalKeys() throws {
        let ring = try parse("new:\(hexB)\nold:\(hexA.uppercased())\nqemu:\(hex(secretC))\n")
        #expect(ring.keys.map(\.identity) == ["new", "old", "qemu"])
        #expect(ring.primary.identity == "new")
        #expect(ring.key(identity: "old")?.secret == secretA)
        #expect(ring.key(identity: "qemu")?.secret == secretC)
        #expect(ring.description == "KeyRing(3 keys: new, old, qemu)")
    }

    @Test("blank lines (empty, or spaces and tabs) are skipped, as QEMU and GnuTLS skip them; line numbers still count them")
    func blankLines() throws {
        let ring = try parse("\n  \n\t\npager:\(hexA)\n\nold:\(hexB)\n\n")
        #expect(ring.keys.map(\.identity) == ["pager", "old"])
        let error = refusal("\n\npager:\(hexA)\n\nbroken\n")
        #expect(error?.line == 5)
    }

    @Test("a last line without a newline parses")
    func noFinalNewline() throws {
        let ring = try parse("a:\(hexA)\nb:\(hexB)")
        #expect(ring.keys.map(\.secret) == [secretA, secretB])
    }

    @Test("identities: inner spaces, UTF-8, exactly 64 bytes")
    func identities() throws {
        let long = String(repeating: "x", count: 64)
        let ring = try parse("host a:\(hexA)\nπager:\(hexB)\n\(long):\(hexA)\n")
        #expect(ring.keys.map(\.identity) == ["host a", "πager", long])
    }

    @Test("identities compare byte for byte, as GnuTLS compares them")
    func byteExactIdentity() throws {
        let ring = try parse("caf\u{E9}:\(hexA)\n")  // precomposed é
        #expect(ring.key(identity: "caf\u{E9}") != nil)
        #expect(ring.key(identity: "cafe\u{301}") == nil)  // e + combining acute: equal as Swift Strings
        // Both spellings in one file are two identities to QEMU, so not duplicates here.
        #expect(try parse("caf\u{E9}:\(hexA)\ncafe\u{301}:\(hexB)\n").keys.count == 2)
    }

    // MARK: Refusals: each names its line and reason

    @Test("an empty file, or one of blank lines only, has no keys")
    func noKeys() {
        for text in ["", "\n", "\n \n\t\n"] {
            let error = refusal(text)
            #expect(error == KeyFileError(.noKeys))
            #expect(error?.description == "no keys: the file holds no identity:hexkey line")
        }
    }

    @Test("refusals name the line and the reason", arguments: [
        ("pager:\(hexA)\r\n", 1, KeyFileError.Reason.carriageReturn),
        ("pager:\(hexA)\nnocolon\(hexB)\n", 2, .noSeparator),
        (":\(hexA)\n", 1, .emptyIdentity),
        ("\(String(repeating: "x", count: 65)):\(hexA)\n", 1, .identityTooLong(bytes: 65)),
        ("a\u{0}b:\(hexA)\n", 1, .identityHasControlCharacter),
        ("a\tb:\(hexA)\n", 1, .identityHasControlCharacter),
        ("\u{FEFF}pager:\(hexA)\n", 1, .identityHasControlCharacter),  // a byte order mark
        (" pager:\(hexA)\n", 1, .identitySurroundedBySpace),
        ("pager :\(hexA)\n", 1, .identitySurroundedBySpace),
        ("#7061676572:\(hexA)\n", 1, .identityStartsWithHash),
        ("# a comment: not in this format\n", 1, .identityStartsWithHash),
        ("pager:\n", 1, .emptyKey),
        ("pager:\(hexA.dropLast())\n", 1, .oddDigitCount(63)),
        ("pager:\(hexA.dropLast())g\n", 1, .notHex(digit: 64, found: .other)),
        ("pager:\(hexA) \n", 1, .notHex(digit: 65, found: .space)),
        ("pager:\(hexA)\t# comment\n", 1, .notHex(digit: 65, found: .tab)),
        ("pager:\(hexA):\(hexB)\n", 1, .notHex(digit: 65, found: .colon)),
        ("pager: \(hexA)\n", 1, .notHex(digit: 1, found: .space)),
        ("pager:\(hex(Array(secretA[..<16])))\n", 1, .keyTooShort(bytes: 16)),
        ("pager:\(String(hexA.dropLast(2)))\n", 1, .keyTooShort(bytes: 31)),
        ("pager:\(hexA)\nother:\(hexB)\n\npager:\(hexB)\n", 4, .duplicateIdentity("pager", firstLine: 1)),
    ])
    func refused(_ text: String, line: Int, reason: KeyFileError.Reason) {
        let error = refusal(text)
        #expect(error == KeyFileError(reason, line: line))
        #expect(error?.description.hasPrefix("line \(line): ") == true, "\(String(describing: error))")
    }

    @Test("an identity that is not UTF-8 is refused")
    func notUTF8() {
        let error = refusal([0x70, 0xFF, UInt8(ascii: ":")] + Array(hexA.utf8) + [0x0A])
        #expect(error == KeyFileError(.identityNotUTF8, line: 1))
    }

    @Test("messages say why in words", arguments: [
        (KeyFileError(.keyTooShort(bytes: 16), line: 3), "line 3: key is 16 bytes; at least 32 (64 hex digits) are needed"),
        (KeyFileError(.oddDigitCount(63), line: 1), "line 1: key has an odd number of hex digits (63)"),
        (KeyFileError(.notHex(digit: 65, found: .space), line: 2),
         "line 2: key character 65 is a space, not a hex digit (nothing may follow the key on its line)"),
        (KeyFileError(.duplicateIdentity("pager", firstLine: 1), line: 4), "line 4: identity \"pager\" already used on line 1"),
        (KeyFileError(.noKeys, path: "/etc/pager/keys.psk"), "key file /etc/pager/keys.psk: no keys: the file holds no identity:hexkey line"),
        (KeyFileError(.carriageReturn, line: 1, path: "k.psk"),
         "key file k.psk: line 1: carriage return (DOS line ending): QEMU would read it as part of the key; convert the file with dos2unix"),
    ])
    func messages(_ error: KeyFileError, _ text: String) {
        #expect(error.description == text)
    }

    @Test("no refusal shows key material")
    func refusalsHideKeys() {
        // Each line holds hexA (or most of it) and is refused for a different reason.
        let texts = [
            "pager:\(hexA)\r\n", "pager:\(hexA) trailing\n", "pager:\(hexA)0\n", "pager:\(hexA)\npager:\(hexA)\n",
            "\(hexA)\n", ":\(hexA)\n", "#x:\(hexA)\n", "pager:\(hexA.prefix(40))\n",
        ]
        for text in texts {
            guard let error = refusal(text) else { continue }
            // No run of 8 key digits appears anywhere in the message.
            for start in stride(from: 0, to: 33, by: 1) {
                let piece = String(Array(hexA)[start..<start + 8])
                #expect(!error.description.contains(piece), "\(error)")
            }
        }
    }

    // MARK: Keys made in code, formatted()

    @Test("formatted() writes identity:hex lines, lower case, one newline each")
    func formattedGolden() throws {
        let keys = [try PresharedKey(identity: "a", secret: secretA), try PresharedKey(identity: "b", secret: secretB.map { $0 | 0xA0 })]
        let text = String(decoding: KeyRing.formatted(keys), as: UTF8.self)
        #expect(text == "a:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
                      + "b:a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\n")
    }

    @Test("formatted() then parsing gives the same keys", arguments: 0..<8)
    func roundTrip(seed: UInt64) throws {
        var rng = SeededRandom(seed: seed)
        let keys = try (0..<Int.random(in: 1...12, using: &rng)).map { i in
            try PresharedKey(identity: "key-\(i)-\(["", "é", " x"].randomElement(using: &rng)!)",
                             secret: (0..<Int.random(in: 32...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
        }
        let ring = try KeyRing(parsing: KeyRing.formatted(keys))
        #expect(ring.keys.map(\.identity) == keys.map(\.identity))
        #expect(ring.keys.map(\.secret) == keys.map(\.secret))
        #expect(KeyRing.formatted(ring.keys) == KeyRing.formatted(keys))
    }

    @Test("keys made in code follow the file's rules")
    func keysInCode() {
        #expect(throws: KeyFileError(.identityHasColon)) { try PresharedKey(identity: "a:b", secret: secretA) }
        #expect(throws: KeyFileError(.emptyIdentity)) { try PresharedKey(identity: "", secret: secretA) }
        #expect(throws: KeyFileError(.identityHasControlCharacter)) { try PresharedKey(identity: "a\nb", secret: secretA) }
        #expect(throws: KeyFileError(.keyTooShort(bytes: 31))) { try PresharedKey(identity: "a", secret: Array(secretA.dropLast())) }
        #expect(throws: KeyFileError(.noKeys)) { try KeyRing(keys: []) }
        #expect(throws: KeyFileError(.duplicateIdentity("a", firstLine: 1), line: 3)) {
            try KeyRing(keys: [PresharedKey(identity: "a", secret: secretA), PresharedKey(identity: "b", secret: secretA),
                               PresharedKey(identity: "a", secret: secretB)])
        }
    }

    @Test("description, debugDescription and dump show the identity and length, never the secret")
    func descriptionHidesSecret() throws {
        let key = try PresharedKey(identity: "pager", secret: secretA)
        var dumped = ""
        dump(key, to: &dumped)
        let ring = try KeyRing(keys: [key])
        var dumpedRing = ""
        dump(ring, to: &dumpedRing)
        for text in ["\(key)", String(reflecting: key), dumped, "\(ring)", dumpedRing, "\([key])"] {
            #expect(text.contains("pager"), "\(text)")
            #expect(!text.contains(hexA.prefix(8)) && !text.contains("0, 1, 2, 3"), "\(text)")
        }
        #expect("\(key)" == "PresharedKey(identity: \"pager\", 32 bytes)")
    }

    @Test("the hex digit decoder agrees with a plain one on every byte")
    func nibbles() {
        for c in UInt8.min...UInt8.max {
            let expected: Int = switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(c) - 48
            case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(c) - 87
            case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(c) - 55
            default: -1
            }
            #expect(KeyRing.nibble(c) == expected, "byte \(c)")
        }
    }
}

/// SplitMix64, so that the round trips are the same on every run.
private struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
