import Testing
import PagerCrypto

@Suite struct SHA256Tests {
    @Test func knownAnswers() {
        // FIPS 180-2 appendix B.1, and the digest of no bytes.
        #expect(hex(SHA256.hash(ascii("abc"))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hex(SHA256.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.byteCount == 32)
    }

    @Test func hasherMatchesOneShotWhateverTheSplit() {
        let message = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        var byByte = SHA256Hasher()
        for byte in message { byByte.update([byte]) }
        var byBuffer = SHA256Hasher()
        message.withUnsafeBytes { all in
            byBuffer.update(UnsafeRawBufferPointer(rebasing: all[0..<333]))
            byBuffer.update(UnsafeRawBufferPointer(rebasing: all[333..<333]))
            byBuffer.update(UnsafeRawBufferPointer(rebasing: all[333...]))
        }
        #expect(byByte.finalized() == SHA256.hash(message))
        #expect(byBuffer.finalized() == SHA256.hash(message))
        #expect(SHA256Hasher().finalized() == SHA256.hash([]))
    }

    @Test func finalizedIsASnapshot() {
        var hasher = SHA256Hasher()
        hasher.update(ascii("ab"))
        #expect(hasher.finalized() == SHA256.hash(ascii("ab")))
        #expect(hasher.finalized() == SHA256.hash(ascii("ab")), "finalizing twice gives the same digest")
        hasher.update(ascii("c"))
        #expect(hasher.finalized() == SHA256.hash(ascii("abc")), "hashing continues after finalized()")
    }

    @Test func copiesHashOnIndependently() {
        var original = SHA256Hasher()
        original.update(ascii("abc"))
        var copy = original
        copy.update(ascii("d"))
        #expect(original.finalized() == SHA256.hash(ascii("abc")))
        #expect(copy.finalized() == SHA256.hash(ascii("abcd")))
        original.update(ascii("e"))
        #expect(original.finalized() == SHA256.hash(ascii("abce")))
        #expect(copy.finalized() == SHA256.hash(ascii("abcd")))
    }
}
