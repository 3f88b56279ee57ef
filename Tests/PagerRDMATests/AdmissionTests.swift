import PagerCrypto
import PagerRDMA
import Testing

@Suite("RDMA: admission of queue pairs")
struct AdmissionTests {
    let key = [UInt8](repeating: 0x5a, count: 32)

    @Test("golden bytes: the layout of the connection request's private data")
    func golden() {
        let nonce = Array(0x10..<0x20).map { UInt8($0) }
        let request = AdmissionRequest(channel: .push, session: 0x0102_0304_0506_0708, key: key, nonce: nonce)
        let bytes = request.bytes
        #expect(bytes.count == 48)
        #expect(Array(bytes[0..<16]) == [0x50, 0x47, 0x52, 0x44, 1, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
        #expect(Array(bytes[16..<32]) == nonce)
        let expected = HMACSHA256.authenticationCode(key: key, parts: [Array("pager-v1 rdma connect".utf8), Array(bytes[0..<32])])
        #expect(Array(bytes[32..<48]) == Array(expected.prefix(16)))
    }

    @Test("the gate admits an authentic request once per channel, and a reconnect with a fresh nonce")
    func admits() throws {
        var gate = AdmissionGate()
        gate.open(session: 7, key: key)
        let demand = AdmissionRequest(channel: .demand, session: 7, key: key)
        #expect(try gate.admit(demand.bytes) == demand)
        #expect(throws: AdmissionError.channelTaken(session: 7, channel: .demand)) {
            try gate.admit(AdmissionRequest(channel: .demand, session: 7, key: key).bytes)
        }
        _ = try gate.admit(AdmissionRequest(channel: .push, session: 7, key: key).bytes)
        gate.disconnected(session: 7, channel: .demand)
        #expect(throws: AdmissionError.replayed(session: 7)) { try gate.admit(demand.bytes) }
        _ = try gate.admit(AdmissionRequest(channel: .demand, session: 7, key: key).bytes)
        // RDMA CM may pad the private data with zeros.
        gate.disconnected(session: 7, channel: .push)
        _ = try gate.admit(AdmissionRequest(channel: .push, session: 7, key: key).bytes + [UInt8](repeating: 0, count: 8))
    }

    @Test("refusals: wrong key, unknown or closed session, malformed bytes, another version")
    func refuses() {
        var gate = AdmissionGate()
        gate.open(session: 7, key: key)
        let wrongKey = [UInt8](repeating: 0xa5, count: 32)
        #expect(throws: AdmissionError.badMAC(session: 7)) { try gate.admit(AdmissionRequest(channel: .demand, session: 7, key: wrongKey).bytes) }
        #expect(throws: AdmissionError.unknownSession(8)) { try gate.admit(AdmissionRequest(channel: .demand, session: 8, key: key).bytes) }
        var flipped = AdmissionRequest(channel: .demand, session: 7, key: key).bytes
        flipped[20] ^= 1
        #expect(throws: AdmissionError.badMAC(session: 7)) { try gate.admit(flipped) }
        #expect(throws: AdmissionError.malformed("private data is 47 bytes, needs 48")) {
            try gate.admit(Array(AdmissionRequest(channel: .demand, session: 7, key: key).bytes.prefix(47)))
        }
        var version = AdmissionRequest(channel: .demand, session: 7, key: key).bytes
        version[4] = 2
        #expect(throws: AdmissionError.unsupportedVersion(2)) { try gate.admit(version) }
        var channel = AdmissionRequest(channel: .demand, session: 7, key: key).bytes
        channel[5] = 9
        #expect(throws: AdmissionError.malformed("channel 9 (0 demand, 1 push)")) { try gate.admit(channel) }
        #expect(throws: AdmissionError.malformed("non-zero bytes after the first 48 of private data")) {
            try gate.admit(AdmissionRequest(channel: .demand, session: 7, key: key).bytes + [1])
        }
        #expect(throws: AdmissionError.malformed("magic 0x0, expected 0x50475244 (not a pager connection)")) {
            try gate.admit([UInt8](repeating: 0, count: 48))
        }
        gate.close(session: 7)
        #expect(throws: AdmissionError.unknownSession(7)) { try gate.admit(AdmissionRequest(channel: .demand, session: 7, key: key).bytes) }
    }
}
