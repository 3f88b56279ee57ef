import Testing
import PagerCrypto

@Suite struct SecretBytesTests {
    @Test func constantTimeEquality() {
        #expect(constantTimeEqual([1, 2, 3], [1, 2, 3]))
        #expect(constantTimeEqual([], []))
        #expect(!constantTimeEqual([1, 2, 3], [1, 2, 4]))
        #expect(!constantTimeEqual([0, 2, 3], [1, 2, 3]))
        #expect(!constantTimeEqual([1, 2, 3], [1, 2]), "different lengths")
        #expect(!constantTimeEqual([], [0]))
        let tag = randomBytes(16)
        #expect(constantTimeEqual(tag, tag))
    }

    @Test func randomBytesHaveTheirCount() {
        #expect(randomBytes(0).isEmpty)
        #expect(randomBytes(1).count == 1)
        let a = randomBytes(32)
        let b = randomBytes(32)
        #expect(a.count == 32)
        #expect(a != b, "two 32-byte draws collide with probability 2^-256")
    }

    @Test func wipeZeroesInPlace() {
        var secret: [UInt8] = [1, 2, 3, 4, 5]
        wipe(&secret)
        #expect(secret == [0, 0, 0, 0, 0])
        var empty: [UInt8] = []
        wipe(&empty)
        #expect(empty.isEmpty)
    }
}
