import Testing
import PagerCrypto

/// Seals `plaintext` cut into parts at `cuts`, through the pointer API the transport uses.
func seal(_ sealer: AESGCMSealer, nonce: [UInt8], aad: [UInt8], plaintext: [UInt8], cuts: [Int] = []) throws -> (ciphertext: [UInt8], tag: [UInt8]) {
    var ciphertext = [UInt8](repeating: 0, count: plaintext.count)
    var tag = [UInt8](repeating: 0, count: AESGCMSealer.tagByteCount)
    let bounds = [0] + cuts + [plaintext.count]
    try plaintext.withUnsafeBytes { plain in
        let parts = zip(bounds, bounds.dropFirst()).map { UnsafeRawBufferPointer(rebasing: plain[$0..<$1]) }
        try aad.withUnsafeBytes { aad in
            try ciphertext.withUnsafeMutableBytes { output in
                try tag.withUnsafeMutableBytes { tag in
                    // An empty array may have no address; the sealer writes nothing there then.
                    let out = output.baseAddress ?? tag.baseAddress!
                    try sealer.seal(nonce: nonce, aad: aad, parts: parts, into: out, tag: tag.baseAddress!)
                }
            }
        }
    }
    return (ciphertext, tag)
}

/// Opens a copy of `ciphertext` in place and returns the plaintext.
func open(_ opener: AESGCMOpener, nonce: [UInt8], aad: [UInt8], ciphertext: [UInt8], tag: [UInt8]) throws(AuthenticationFailure) -> [UInt8] {
    var buffer = ciphertext
    let result: AuthenticationFailure? = aad.withUnsafeBytes { aad in
        tag.withUnsafeBytes { tag in
            buffer.withUnsafeMutableBytes { buffer in
                do throws(AuthenticationFailure) {
                    try opener.open(nonce: nonce, aad: aad, inPlace: buffer, tag: tag)
                    return nil
                } catch { return error }
            }
        }
    }
    if let result { throw result }
    return buffer
}

@Suite struct AESGCMTests {
    struct Vector: Sendable, CustomTestStringConvertible {
        let name: String
        let key: String
        let nonce: String
        let plaintext: String
        let aad: String
        let ciphertext: String
        let tag: String
        var testDescription: String { name }
    }

    static let gcmKey = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"
    static let gcmPlaintext = """
        d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
        1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255
        """
    static let gcmCiphertext = """
        522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
        8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad
        """

    // McGrew and Viega, "The Galois/Counter Mode of Operation (GCM)", test cases 13 to 16
    // (AES-256, 96-bit IV).
    static let vectors = [
        Vector(name: "GCM test case 13", key: String(repeating: "00", count: 32), nonce: String(repeating: "00", count: 12),
               plaintext: "", aad: "", ciphertext: "", tag: "530f8afbc74536b9a963b4f1c4cb738b"),
        Vector(name: "GCM test case 14", key: String(repeating: "00", count: 32), nonce: String(repeating: "00", count: 12),
               plaintext: String(repeating: "00", count: 16), aad: "",
               ciphertext: "cea7403d4d606b6e074ec5d3baf39d18", tag: "d0d1c8a799996bf0265b98b5d48ab919"),
        Vector(name: "GCM test case 15", key: gcmKey, nonce: "cafebabefacedbaddecaf888", plaintext: gcmPlaintext, aad: "",
               ciphertext: gcmCiphertext, tag: "b094dac5d93471bdec1a502270e3cc6c"),
        Vector(name: "GCM test case 16", key: gcmKey, nonce: "cafebabefacedbaddecaf888",
               plaintext: String(gcmPlaintext.filter { !$0.isWhitespace }.dropLast(8)),
               aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
               ciphertext: String(gcmCiphertext.filter { !$0.isWhitespace }.dropLast(8)), tag: "76fc6ece0f4e1768cddf8853bb2d551b"),
    ]

    @Test(arguments: vectors)
    func sealKnownAnswer(_ v: Vector) throws {
        let sealed = try seal(AESGCMSealer(key: hex(v.key)), nonce: hex(v.nonce), aad: hex(v.aad), plaintext: hex(v.plaintext))
        #expect(hex(sealed.ciphertext) == v.ciphertext.filter { !$0.isWhitespace })
        #expect(hex(sealed.tag) == v.tag)
    }

    @Test(arguments: vectors)
    func sealInParts(_ v: Vector) throws {
        let plaintext = hex(v.plaintext)
        let sealer = try AESGCMSealer(key: hex(v.key))
        // Parts that cross the 16-byte block boundaries, empty parts, and one byte at a time.
        let splits: [[Int]] = [[], [0], [1], [7, 7, 23], [15, 16, 17], [31, 33, 50], Array(0...plaintext.count)]
        for cuts in splits {
            let inRange = cuts.filter { $0 <= plaintext.count }
            let sealed = try seal(sealer, nonce: hex(v.nonce), aad: hex(v.aad), plaintext: plaintext, cuts: inRange)
            #expect(hex(sealed.ciphertext) == v.ciphertext.filter { !$0.isWhitespace }, "cuts \(inRange)")
            #expect(hex(sealed.tag) == v.tag, "cuts \(inRange)")
        }
    }

    @Test(arguments: vectors)
    func openKnownAnswerInPlace(_ v: Vector) throws {
        let opener = try AESGCMOpener(key: hex(v.key))
        let plaintext = try open(opener, nonce: hex(v.nonce), aad: hex(v.aad), ciphertext: hex(v.ciphertext), tag: hex(v.tag))
        #expect(plaintext == hex(v.plaintext))
    }

    @Test(arguments: vectors)
    func alteredRecordsAreRejected(_ v: Vector) throws {
        let opener = try AESGCMOpener(key: hex(v.key))
        let (nonce, aad, ciphertext, tag) = (hex(v.nonce), hex(v.aad), hex(v.ciphertext), hex(v.tag))
        func flipped(_ bytes: [UInt8], bit: Int) -> [UInt8] {
            var bytes = bytes
            bytes[bit / 8] ^= 1 << (bit % 8)
            return bytes
        }
        for bit in stride(from: 0, to: ciphertext.count * 8, by: 13) {
            #expect(throws: AuthenticationFailure.tagMismatch) {
                try open(opener, nonce: nonce, aad: aad, ciphertext: flipped(ciphertext, bit: bit), tag: tag)
            }
        }
        for bit in 0..<(tag.count * 8) {
            #expect(throws: AuthenticationFailure.tagMismatch) {
                try open(opener, nonce: nonce, aad: aad, ciphertext: ciphertext, tag: flipped(tag, bit: bit))
            }
        }
        for bit in stride(from: 0, to: aad.count * 8, by: 7) {
            #expect(throws: AuthenticationFailure.tagMismatch) {
                try open(opener, nonce: nonce, aad: flipped(aad, bit: bit), ciphertext: ciphertext, tag: tag)
            }
        }
        #expect(throws: AuthenticationFailure.tagMismatch) {
            try open(opener, nonce: flipped(nonce, bit: 95), aad: aad, ciphertext: ciphertext, tag: tag)
        }
        #expect(throws: AuthenticationFailure.tagMismatch) {
            try open(opener, nonce: nonce, aad: aad + [0], ciphertext: ciphertext, tag: tag)
        }
        // The same context still opens the genuine record after all those failures.
        #expect(try open(opener, nonce: nonce, aad: aad, ciphertext: ciphertext, tag: tag) == hex(v.plaintext))
    }

    @Test func oneContextForManyRecordsMatchesFreshContexts() throws {
        let key = randomBytes(32)
        let sealer = try AESGCMSealer(key: key)
        let opener = try AESGCMOpener(key: key)
        for record in 0..<64 {
            let nonce = randomBytes(12)
            let aad = randomBytes(record % 5 * 7)
            let plaintext = randomBytes([0, 1, 15, 16, 17, 4096, 4096 + 24, 65_536][record % 8])
            let cuts = plaintext.count > 20 ? [3, 19].map { min($0 + record, plaintext.count) } : []
            let reused = try seal(sealer, nonce: nonce, aad: aad, plaintext: plaintext, cuts: cuts)
            let fresh = try seal(AESGCMSealer(key: key), nonce: nonce, aad: aad, plaintext: plaintext)
            #expect(reused.ciphertext == fresh.ciphertext, "record \(record)")
            #expect(reused.tag == fresh.tag, "record \(record)")
            #expect(try open(opener, nonce: nonce, aad: aad, ciphertext: reused.ciphertext, tag: reused.tag) == plaintext)
            #expect(try open(AESGCMOpener(key: key), nonce: nonce, aad: aad, ciphertext: reused.ciphertext, tag: reused.tag) == plaintext)
        }
    }

    @Test func counterNonceIsFourZeroBytesThenBigEndian() throws {
        let key = randomBytes(32)
        let sealer = try AESGCMSealer(key: key)
        let opener = try AESGCMOpener(key: key)
        let plaintext = randomBytes(100)
        let aad = ascii("header")
        for counter: UInt64 in [0, 1, 0x0102_0304_0506_0708, .max] {
            let nonce: [UInt8] = [0, 0, 0, 0] + (0..<8).map { UInt8(truncatingIfNeeded: counter >> (56 - 8 * $0)) }
            let byNonce = try seal(sealer, nonce: nonce, aad: aad, plaintext: plaintext)
            var ciphertext = [UInt8](repeating: 0, count: plaintext.count)
            var tag = [UInt8](repeating: 0, count: 16)
            try plaintext.withUnsafeBytes { plain in
                try aad.withUnsafeBytes { aad in
                    try ciphertext.withUnsafeMutableBytes { out in
                        try tag.withUnsafeMutableBytes { tag in
                            try sealer.seal(counter: counter, aad: aad, parts: [plain], into: out.baseAddress!, tag: tag.baseAddress!)
                        }
                    }
                }
            }
            #expect(ciphertext == byNonce.ciphertext, "counter \(counter)")
            #expect(tag == byNonce.tag, "counter \(counter)")
            var buffer = ciphertext
            try aad.withUnsafeBytes { aad in
                try tag.withUnsafeBytes { tag in
                    try buffer.withUnsafeMutableBytes { try opener.open(counter: counter, aad: aad, inPlace: $0, tag: tag) }
                }
            }
            #expect(buffer == plaintext)
            #expect(throws: AuthenticationFailure.tagMismatch) {
                var buffer = ciphertext
                try aad.withUnsafeBytes { aad in
                    try tag.withUnsafeBytes { tag in
                        try buffer.withUnsafeMutableBytes { try opener.open(counter: counter &+ 1, aad: aad, inPlace: $0, tag: tag) }
                    }
                }
            }
        }
    }

    @Test func rekeyIsAFreshKey() throws {
        let (first, second) = (randomBytes(32), randomBytes(32))
        let sealer = try AESGCMSealer(key: first)
        let opener = try AESGCMOpener(key: first)
        let nonce = randomBytes(12)
        let plaintext = randomBytes(1000)
        let underFirst = try seal(sealer, nonce: nonce, aad: [], plaintext: plaintext)
        try sealer.rekey(second)
        try opener.rekey(second)
        let underSecond = try seal(sealer, nonce: nonce, aad: [], plaintext: plaintext)
        let fresh = try seal(AESGCMSealer(key: second), nonce: nonce, aad: [], plaintext: plaintext)
        #expect(underSecond.ciphertext == fresh.ciphertext)
        #expect(underSecond.tag == fresh.tag)
        #expect(underSecond.ciphertext != underFirst.ciphertext)
        #expect(try open(opener, nonce: nonce, aad: [], ciphertext: underSecond.ciphertext, tag: underSecond.tag) == plaintext)
        #expect(throws: AuthenticationFailure.tagMismatch) {
            try open(opener, nonce: nonce, aad: [], ciphertext: underFirst.ciphertext, tag: underFirst.tag)
        }
    }

    @Test func wrongKeyLengthsAreRefused() {
        #expect(throws: CryptoError.self) { try AESGCMSealer(key: randomBytes(16)) }
        #expect(throws: CryptoError.self) { try AESGCMOpener(key: randomBytes(33)) }
        #expect(throws: CryptoError.self) { try AESGCMSealer(key: randomBytes(32)).rekey([]) }
    }
}
