import PagerCrypto
import Testing
@testable import PagerTrust

/// Known answers computed independently (Python's hmac/hashlib, HKDF written from RFC 5869).
@Suite struct HandshakeKeysTests {
    let keys = HandshakeKeys(presharedKey: Array(0..<32), sharedSecret: Array(100..<132),
                             resumeToken: Array(repeating: 0xAA, count: 16), transcriptHash: SHA256.hash(Array("transcript one".utf8)))

    @Test func derivesTheKnownKeys() {
        #expect(hex(keys.clientMACKey) == "23e680bf0c690ff5ce6721d3610ea2058ead4c2b82b6087970b450206d8332f3")
        #expect(hex(keys.serverMACKey) == "41cb3e91975cc4005b924df4b720cc615339edf4add234ece4b0c8e7257da95f")
        #expect(hex(keys.clientWriteKey) == "7b3d238287b0df70863dfe309b2abf008e3f3ad6c2fed0d9e48b19404d92aa4f")
        #expect(hex(keys.serverWriteKey) == "49b7558fd2f973b504ec6043ec0ba54c279ddae487358ae8d57079728c59f745")
        #expect(hex(keys.admissionKey) == "23e1969233649a085120e3ef409037ca89f0a6014acfd01ef0816c20bb21144d")
    }

    @Test func computesTheKnownMACs() {
        #expect(hex(keys.clientMAC(transcriptHash: SHA256.hash(Array("transcript one".utf8))))
                == "5fdf9534d5356f73b0f55cf86b3141914edbaf820f3323daf55df212bb4a4f13")
        #expect(hex(keys.serverMAC(transcriptHash: SHA256.hash(Array("transcript two".utf8))))
                == "6a6e5f8c6ab1be567d0a4bb0b19830792693f5a03e19ef47b0d45006afc924a4")
        #expect(hex(HandshakeKeys.updated(keys.clientWriteKey)) == "970465a8316ff658626bb318e1e10c75cc4d9b2f639c64d1a1d7ade281dac7c2")
    }

    @Test func everyInputChangesEveryKey() {
        let base = (psk: [UInt8](0..<32), shared: [UInt8](100..<132), token: [UInt8](repeating: 0xAA, count: 16), h1: SHA256.hash([1]))
        let reference = HandshakeKeys(presharedKey: base.psk, sharedSecret: base.shared, resumeToken: base.token, transcriptHash: base.h1)
        let variants = [
            HandshakeKeys(presharedKey: base.psk.reversed(), sharedSecret: base.shared, resumeToken: base.token, transcriptHash: base.h1),
            HandshakeKeys(presharedKey: base.psk, sharedSecret: base.shared.reversed(), resumeToken: base.token, transcriptHash: base.h1),
            HandshakeKeys(presharedKey: base.psk, sharedSecret: base.shared, resumeToken: Array(repeating: 0, count: 16), transcriptHash: base.h1),
            HandshakeKeys(presharedKey: base.psk, sharedSecret: base.shared, resumeToken: base.token, transcriptHash: SHA256.hash([2])),
        ]
        for v in variants {
            #expect(v.clientMACKey != reference.clientMACKey && v.serverMACKey != reference.serverMACKey)
            #expect(v.clientWriteKey != reference.clientWriteKey && v.serverWriteKey != reference.serverWriteKey)
        }
        // The two directions never share a key: a MAC or record cannot be reflected.
        #expect(reference.clientMACKey != reference.serverMACKey && reference.clientWriteKey != reference.serverWriteKey)
        #expect(Set([reference.admissionKey, reference.clientMACKey, reference.serverMACKey, reference.clientWriteKey, reference.serverWriteKey]).count == 5)
    }

    private func hex(_ b: [UInt8]) -> String { b.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined() }
}
