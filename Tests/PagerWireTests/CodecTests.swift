import PagerWire
import Testing

@Suite("Codec round trips and fast paths")
struct CodecTests {
    /// Random valid messages of every type.
    static func randomMessage(_ rng: inout SplitMix) -> Message {
        func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) } }
        func aligned(_ max: UInt64) -> UInt64 { (UInt64.random(in: 0...max, using: &rng) / 4096) * 4096 }
        func length() -> UInt64 { 4096 * UInt64.random(in: 1...16, using: &rng) }
        let name = String((0..<Int.random(in: 0...20, using: &rng)).map { _ in "abcé/._-".randomElement(using: &rng)! })
        switch Int.random(in: 0..<18, using: &rng) {
        case 0: return .hello(Hello(features: Features(rawValue: rng.next()), maxPayload: UInt32.random(in: 65536...0x210000, using: &rng),
                                    resumeSession: rng.next(), resumeToken: bytes(16), clientName: name, keyIdentity: String(name.prefix(5))))
        case 1: return .welcome(Welcome(features: Features(rawValue: rng.next()), regionCount: UInt32.random(in: 0...9, using: &rng),
                                        session: rng.next(), resumeToken: bytes(16)))
        case 2: return .region(RegionDescriptor(id: UInt32.random(in: 0...UInt32.max, using: &rng), pageShift: [12, 21, 30].randomElement(using: &rng)!,
                                                flags: Bool.random(using: &rng) ? .live : [], length: 1 << 30, name: name))
        case 3: return .pageRequest(PageRequest(requestID: UInt32.random(in: 0...UInt32.max, using: &rng), region: 1,
                                                offset: aligned(1 << 40), length: length(),
                                                flags: [[], .urgent, .prefetch].randomElement(using: &rng)!))
        case 4:
            let len = length()
            let data = bytes(Int(len))
            let sums = Bool.random(using: &rng) ? stride(from: 0, to: data.count, by: 4096).map { CRC32C.checksum(Array(data[$0..<$0 + 4096])) } : nil
            return .pageData(PageData(requestID: 3, region: 2, offset: aligned(1 << 40), length: len, flags: .urgent, encoding: .raw, checksums: sums, data: data))
        case 5: return .pageData(PageData(requestID: 0, region: 2, offset: aligned(1 << 40), length: aligned(1 << 50) + 4096, flags: .push, encoding: .zero, data: []))
        case 6: return .invalidate(Invalidate(sequence: 9, region: 1, ranges: (0..<Int.random(in: 1...40, using: &rng)).map { _ in PageRange(offset: aligned(1 << 30), length: length()) }))
        case 7: return .invalidateAck(sequence: 9, region: 1)
        case 8: return .complete(region: Message.allRegions, residentBytes: rng.next())
        case 9: return .ping(token: rng.next(), timestamp: rng.next())
        case 10: return .error(ProtocolError(code: ErrorCode(rawValue: UInt16.random(in: 1...40, using: &rng)), requestID: 5, message: name))
        case 11: return .authResponse(clientNonce: bytes(32), share: bytes(32), mac: bytes(32))
        case 12: return .rdmaKey(region: 1, rkey: 77, address: rng.next(), length: 4096)
        case 13: return .switched(region: UInt32.random(in: 0...UInt32.max, using: &rng), lastSequence: UInt32.random(in: 0...UInt32.max, using: &rng))
        case 14:
            // Ascending and apart: each range starts at least a page past the end of the last.
            var at: UInt64 = 0
            let ranges = (0..<Int.random(in: 0...20, using: &rng)).map { _ -> PageRange in
                let r = PageRange(offset: at + aligned(1 << 24), length: length())
                at = r.offset + r.length + 4096
                return r
            }
            return .received(Received(region: UInt32.random(in: 0...UInt32.max, using: &rng), ranges: ranges,
                                      more: Bool.random(using: &rng), staged: Bool.random(using: &rng)))
        case 15:
            // Sparse: a random map over 1..<200 pages with at least one data page.
            let pages = Int.random(in: 1..<200, using: &rng)
            var map = [UInt64](repeating: 0, count: (pages + 63) / 64)
            for p in 0..<pages where Bool.random(using: &rng) { map[p / 64] |= 1 << UInt64(p % 64) }
            let first = Int.random(in: 0..<pages, using: &rng)
            map[first / 64] |= 1 << UInt64(first % 64)
            let n = map.reduce(0) { $0 + $1.nonzeroBitCount }
            let data = bytes(n * 4096)
            let sums = Bool.random(using: &rng) ? stride(from: 0, to: data.count, by: 4096).map { CRC32C.checksum(Array(data[$0..<$0 + 4096])) } : nil
            return .pageData(PageData(requestID: 0, region: 1, offset: aligned(1 << 40), length: UInt64(pages) * 4096, flags: .push,
                                      encoding: .sparse, pageMap: map, checksums: sums, data: data))
        case 16: return .pushRead(region: UInt32.random(in: 0...UInt32.max, using: &rng), offset: aligned(1 << 50),
                                  length: UInt32(aligned(2 << 20 - 4096)) + 4096)
        default: return .pushComplete(region: 4, bytes: rng.next())
        }
    }

    @Test("random messages of every type survive encode then decode", arguments: 0..<8)
    func roundTrip(seed: UInt64) throws {
        var rng = SplitMix(seed: seed)
        for _ in 0..<250 {
            let m = CodecTests.randomMessage(&rng)
            let decoded = try #require(try decodeOne(m.encoded()).get())
            #expect(decoded == m)
        }
    }

    @Test("a sparse frame's runs: data and zero runs in order, each data run's offset into the data")
    func sparseRuns() {
        // 70 pages: data 0-1, zero 2-3, data 4, zero 5-63, data 64-69.
        let map: [UInt64] = [0b10011, 0b111111]
        let h = PageDataHeader(requestID: 0, region: 1, offset: 0x10000, length: 70 * 4096, flags: .push, encoding: .sparse, pageMap: map)
        #expect(h.dataPageCount == 9 && h.pageMapWords == 2)
        #expect(h.payloadLength == 32 + 16 + 9 * 4096)
        let runs = h.runs.map { ($0.range.lowerBound, $0.range.upperBound, $0.dataOffset) }
        let page: UInt64 = 4096, base: UInt64 = 0x10000
        let expected: [(UInt64, UInt64, Int?)] = [(base, base + 2 * page, 0), (base + 2 * page, base + 4 * page, nil),
                                                  (base + 4 * page, base + 5 * page, 8192), (base + 5 * page, base + 64 * page, nil),
                                                  (base + 64 * page, base + 70 * page, 3 * 4096)]
        #expect(runs.count == expected.count)
        for (r, e) in zip(runs, expected) { #expect(r.0 == e.0 && r.1 == e.1 && r.2 == e.2) }
        #expect(PageDataHeader(requestID: 0, region: 1, offset: 0, length: 8192, flags: [], encoding: .raw).runs.map(\.dataOffset) == [0])
        #expect((0..<9).map { h.rangePage(ofDataPage: $0) } == [0, 1, 4, 64, 65, 66, 67, 68, 69], "a checksum mismatch names the right page")
    }

    @Test("the allocation-free PAGE_DATA header writer produces the codec's bytes")
    func pageDataFastPath() {
        let data = [UInt8](repeating: 0x5A, count: 8192)
        let m = PageData(requestID: 99, region: 3, offset: 0x7000, length: 8192, flags: .urgent, encoding: .raw, data: data)
        let frame = Message.pageData(m).encoded()
        var fast = [UInt8](repeating: 0, count: FrameHeader.size + PageDataHeader.size)
        fast.withUnsafeMutableBytes { m.header.encodeFrameHeader(into: $0.baseAddress!, payloadLength: m.header.payloadLength) }
        #expect(Array(frame.prefix(fast.count)) == fast)
        #expect(m.header.payloadLength == frame.count - FrameHeader.size)
    }

    @Test("strings longer than their cap are cut at a character boundary when encoding")
    func stringCaps() throws {
        let long = String(repeating: "é", count: 600) // 1200 bytes
        let m = Message.error(ProtocolError(code: .ioError, message: long))
        guard case .error(let e)? = try? decodeOne(m.encoded()).get() else { Issue.record("did not decode"); return }
        #expect(e.message.utf8.count <= 1024)
        #expect(e.message.allSatisfy { $0 == "é" })
    }

    @Test("CRC-32C matches the standard check value and a bitwise reference")
    func crc() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        var rng = SplitMix(seed: 1)
        for n in [0, 1, 7, 8, 9, 63, 4096, 4099] {
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            var c: UInt32 = 0xFFFF_FFFF
            for b in bytes {
                c ^= UInt32(b)
                for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            }
            #expect(CRC32C.checksum(bytes) == ~c)
        }
    }
}
