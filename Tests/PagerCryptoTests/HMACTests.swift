import Testing
import PagerCrypto

@Suite struct HMACSHA256Tests {
    struct Vector: Sendable, CustomTestStringConvertible {
        let name: String
        let key: [UInt8]
        let data: [UInt8]
        let mac: String
        var testDescription: String { name }
    }

    // RFC 4231 section 4 (test case 5 is a truncated MAC, which this API does not produce).
    static let vectors = [
        Vector(name: "RFC 4231 test case 1", key: [UInt8](repeating: 0x0b, count: 20), data: ascii("Hi There"),
               mac: "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        Vector(name: "RFC 4231 test case 2", key: ascii("Jefe"), data: ascii("what do ya want for nothing?"),
               mac: "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        Vector(name: "RFC 4231 test case 3", key: [UInt8](repeating: 0xaa, count: 20), data: [UInt8](repeating: 0xdd, count: 50),
               mac: "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
        Vector(name: "RFC 4231 test case 4", key: Array(1...25), data: [UInt8](repeating: 0xcd, count: 50),
               mac: "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
        Vector(name: "RFC 4231 test case 6", key: [UInt8](repeating: 0xaa, count: 131),
               data: ascii("Test Using Larger Than Block-Size Key - Hash Key First"),
               mac: "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
        Vector(name: "RFC 4231 test case 7", key: [UInt8](repeating: 0xaa, count: 131),
               data: ascii("This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm."),
               mac: "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
    ]

    @Test(arguments: vectors)
    func knownAnswer(_ vector: Vector) {
        #expect(hex(HMACSHA256.authenticationCode(key: vector.key, parts: [vector.data])) == vector.mac)
    }

    @Test(arguments: vectors)
    func partsAreConcatenated(_ vector: Vector) {
        // Every two-way split, with empty parts at the ends and in the middle.
        for cut in 0...vector.data.count {
            let parts = [[], Array(vector.data[..<cut]), [], Array(vector.data[cut...])]
            #expect(hex(HMACSHA256.authenticationCode(key: vector.key, parts: parts)) == vector.mac, "cut at \(cut)")
        }
        let byByte = vector.data.map { [$0] }
        #expect(hex(HMACSHA256.authenticationCode(key: vector.key, parts: byByte)) == vector.mac)
    }

    @Test func noPartsIsTheEmptyMessage() {
        let key = ascii("key")
        #expect(HMACSHA256.authenticationCode(key: key, parts: []) == HMACSHA256.authenticationCode(key: key, parts: [[]]))
        #expect(HMACSHA256.authenticationCode(key: key, parts: []).count == 32)
    }
}
