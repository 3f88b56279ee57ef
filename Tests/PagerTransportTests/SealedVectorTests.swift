import Glibc
@testable import PagerTransport
import PagerWire
import Testing

/// The sealed records of Protocols/vectors/handshake.txt (§5.1, computed by make_vectors.py
/// with Python's `cryptography` AES-GCM): the channel's sealer makes exactly those bytes, and
/// its opener takes them back, in order, under each block's write keys.
@Suite struct SealedVectorTests {
    /// Each block's `name: hex` values.
    static func blocks() throws -> [[String: [UInt8]]] {
        let root = String(#filePath).split(separator: "/").dropLast(3).joined(separator: "/")
        guard let file = fopen("/" + root + "/Protocols/vectors/handshake.txt", "r") else { return [] }
        defer { fclose(file) }
        var raw: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 65536)
        while case let n = fread(&chunk, 1, chunk.count, file), n > 0 { raw += chunk[0..<n] }
        var blocks: [[String: [UInt8]]] = [], current: [String: [UInt8]] = [:]
        for line in String(decoding: raw, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
            if line.isEmpty {
                if !current.isEmpty { blocks.append(current) }
                current = [:]
            } else if !line.hasPrefix("#"), let colon = line.firstIndex(of: ":") {
                let digits = Array(line[line.index(after: colon)...].filter { $0 != " " })
                current[String(line[..<colon])] = stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
            }
        }
        if !current.isEmpty { blocks.append(current) }
        return blocks
    }

    @Test func theSealerMakesTheVectorsRecordsAndTheOpenerTakesThem() throws {
        let blocks = try Self.blocks()
        #expect(blocks.count == 2)
        for b in blocks {
            for (direction, key, records) in [("server", b["server-write-key"]!, 1), ("client", b["client-write-key"]!, 2)] {
                let sealer = try RecordSealer(key: key, limits: .standard)
                let opener = try RecordOpener(key: key, limits: .standard, clearErrorFirst: false)
                for i in 0..<records {
                    let plain = b["plain-\(direction)-\(i)"]!, expected = b["sealed-\(direction)-\(i)"]!
                    let sealed = try plain.withUnsafeBytes { Array(try sealer.seal([$0])) }
                    #expect(sealed == expected, "\(direction) record \(i)")
                    var payload = Array(expected[FrameHeader.size...])
                    let header = Array(expected[..<FrameHeader.size])
                    let opened = header.withUnsafeBytes { h in payload.withUnsafeMutableBytes { opener.open(header: h, sealed: $0) } }
                    #expect(opened, "\(direction) record \(i) opens")
                    #expect(Array(payload.dropLast(16)) == Array(plain[FrameHeader.size...]))
                }
            }
        }
    }
}
