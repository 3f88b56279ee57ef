import Testing
import PagerCrypto

@Suite struct X25519Tests {
    // RFC 7748 section 5.2: scalar, input u-coordinate, output u-coordinate.
    @Test(arguments: [
        ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
         "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
         "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
        // Its u-coordinate has the top bit set, which X25519 must ignore.
        ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
         "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
         "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
    ])
    func scalarMultiplication(scalar: String, u: String, expected: String) throws {
        let pair = try X25519KeyPair(privateKey: hex(scalar))
        #expect(hex(try pair.sharedSecret(peerPublicKey: hex(u))) == expected)
    }

    @Test func iterated() throws {
        // RFC 7748 section 5.2: k = u = 9; then k, u = X25519(k, u), k, after 1 and 1000 rounds.
        var k: [UInt8] = [9] + [UInt8](repeating: 0, count: 31)
        var u = k
        for round in 1...1000 {
            let result = try X25519KeyPair(privateKey: k).sharedSecret(peerPublicKey: u)
            (u, k) = (k, result)
            if round == 1 { #expect(hex(k) == "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079") }
        }
        #expect(hex(k) == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
    }

    @Test func aliceAndBob() throws {
        // RFC 7748 section 6.1.
        let alice = try X25519KeyPair(privateKey: hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
        let bob = try X25519KeyPair(privateKey: hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
        #expect(hex(alice.publicKey) == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        #expect(hex(bob.publicKey) == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        let shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        #expect(hex(try alice.sharedSecret(peerPublicKey: bob.publicKey)) == shared)
        #expect(hex(try bob.sharedSecret(peerPublicKey: alice.publicKey)) == shared)
    }

    @Test func freshPairsAgree() throws {
        let a = try X25519KeyPair()
        let b = try X25519KeyPair()
        #expect(a.publicKey.count == 32)
        #expect(a.publicKey != b.publicKey)
        #expect(try a.sharedSecret(peerPublicKey: b.publicKey) == b.sharedSecret(peerPublicKey: a.publicKey))
    }

    // Points of small order give the all-zero secret whatever the private key: u = 0, u = 1, and
    // the order-8 point 0xe0eb7a7c... (from the list in libsodium and RFC 7748's section 7 remark).
    @Test(arguments: [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    ])
    func smallOrderPointIsRefused(u: String) throws {
        let pair = try X25519KeyPair()
        #expect(throws: CryptoError.self) { try pair.sharedSecret(peerPublicKey: hex(u)) }
    }

    @Test func wrongLengthsAreRefused() throws {
        let pair = try X25519KeyPair()
        let error = #expect(throws: CryptoError.self) { try pair.sharedSecret(peerPublicKey: [UInt8](repeating: 9, count: 31)) }
        #expect(error?.description.contains("31") == true)
        #expect(throws: CryptoError.self) { try X25519KeyPair(privateKey: [UInt8](repeating: 1, count: 33)) }
    }
}
