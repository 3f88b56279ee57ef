import Testing
import PagerCrypto

@Suite struct HKDFSHA256Tests {
    struct Vector: Sendable, CustomTestStringConvertible {
        let name: String
        let inputKeyMaterial: [UInt8]
        let salt: [UInt8]
        let info: [UInt8]
        let pseudorandomKey: String
        let outputKeyMaterial: String
        var testDescription: String { name }
    }

    // RFC 5869 appendix A.1 to A.3, the SHA-256 cases.
    static let vectors = [
        Vector(name: "RFC 5869 A.1", inputKeyMaterial: [UInt8](repeating: 0x0b, count: 22), salt: Array(0x00...0x0c), info: Array(0xf0...0xf9),
               pseudorandomKey: "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
               outputKeyMaterial: "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
        Vector(name: "RFC 5869 A.2", inputKeyMaterial: Array(0x00...0x4f), salt: Array(0x60...0xaf), info: Array(0xb0...0xff),
               pseudorandomKey: "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
               outputKeyMaterial: """
                   b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09
                   da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87
                   """),
        Vector(name: "RFC 5869 A.3 (empty salt and info)", inputKeyMaterial: [UInt8](repeating: 0x0b, count: 22), salt: [], info: [],
               pseudorandomKey: "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
               outputKeyMaterial: "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
    ]

    @Test(arguments: vectors)
    func knownAnswer(_ vector: Vector) {
        let prk = HKDFSHA256.extract(salt: vector.salt, inputKeyMaterial: vector.inputKeyMaterial)
        #expect(hex(prk) == vector.pseudorandomKey)
        let okm = hex(vector.outputKeyMaterial)
        #expect(HKDFSHA256.expand(pseudorandomKey: prk, info: vector.info, count: okm.count) == okm)
    }

    @Test(arguments: vectors)
    func shorterOutputIsAPrefix(_ vector: Vector) {
        let okm = hex(vector.outputKeyMaterial)
        for count in [1, 31, 32, 33] {
            #expect(HKDFSHA256.expand(pseudorandomKey: hex(vector.pseudorandomKey), info: vector.info, count: count) == Array(okm[..<count]))
        }
    }

    @Test func emptySaltIsHashLenZeros() {
        // RFC 5869 section 2.2: "if not provided, it is set to a string of HashLen zeros".
        let ikm = ascii("input keying material")
        #expect(HKDFSHA256.extract(salt: [], inputKeyMaterial: ikm) == HKDFSHA256.extract(salt: [UInt8](repeating: 0, count: 32), inputKeyMaterial: ikm))
        #expect(HKDFSHA256.extract(salt: [], inputKeyMaterial: ikm) == HMACSHA256.authenticationCode(key: [UInt8](repeating: 0, count: 32), parts: [ikm]))
    }

    @Test func longestOutput() {
        let prk = HKDFSHA256.extract(salt: ascii("salt"), inputKeyMaterial: ascii("ikm"))
        #expect(HKDFSHA256.expand(pseudorandomKey: prk, info: [], count: 255 * 32).count == 8160)
    }
}
