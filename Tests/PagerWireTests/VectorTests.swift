import PagerCore
import Glibc
import PagerWire
import Testing

/// One block of Protocols/vectors/*.hex.
struct Vector: CustomTestStringConvertible, Sendable {
    var comment: String
    var meaning: String?
    var error: String?
    var bytes: [UInt8]
    var testDescription: String { comment }
}

/// Reads a vector file from Protocols/vectors in the source tree.
func loadVectors(_ name: String) throws -> [Vector] {
    let root = String(#filePath).split(separator: "/").dropLast(3).joined(separator: "/")
    let path = "/" + root + "/Protocols/vectors/" + name
    guard let file = fopen(path, "r") else { throw VectorFileMissing(path: path) }
    defer { fclose(file) }
    var raw: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n == 0 { break }
        raw += chunk[0..<n]
    }
    let text = String(decoding: raw, as: UTF8.self)
    var vectors: [Vector] = []
    var current = Vector(comment: "", bytes: [])
    for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
        if line.hasPrefix("# ") { current.comment = String(line.dropFirst(2)) }
        else if line.hasPrefix("meaning: ") { current.meaning = String(line.dropFirst(9)) }
        else if line.hasPrefix("error: ") { current.error = String(line.dropFirst(7)) }
        else if line.hasPrefix("hex: ") {
            let digits = Array(line.dropFirst(5).filter { $0 != " " })
            current.bytes = stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
            vectors.append(current)
            current = Vector(comment: "", bytes: [])
        }
    }
    return vectors
}

struct VectorFileMissing: Error { var path: String }

/// Decodes exactly one frame from `bytes`, or returns the error.
func decodeOne(_ bytes: [UInt8]) -> Result<Message?, WireError> {
    var decoder = FrameDecoder()
    decoder.append(bytes)
    return Result { () throws(WireError) in try decoder.next() }
}

@Suite("Protocol test vectors")
struct VectorTests {
    static let valid = (try? loadVectors("valid.hex")) ?? []
    static let invalid = (try? loadVectors("invalid.hex")) ?? []

    @Test("the vector files are present and complete")
    func present() {
        #expect(VectorTests.valid.count >= 25)
        #expect(VectorTests.invalid.count >= 25)
        #expect(VectorTests.valid.allSatisfy { $0.meaning != nil && !$0.bytes.isEmpty })
        #expect(VectorTests.invalid.allSatisfy { $0.error != nil && !$0.bytes.isEmpty })
        // Every message type appears in the valid vectors.
        let seen = Set(VectorTests.valid.compactMap { v in (try? decodeOne(v.bytes).get())??.type })
        #expect(seen == Set(MessageType.allCases))
    }

    @Test("valid frames decode to their documented meaning and re-encode to the same bytes", arguments: valid)
    func validFrame(_ v: Vector) throws {
        let message = try #require(try decodeOne(v.bytes).get())
        #expect(message.description == v.meaning)
        #expect(message.encoded() == v.bytes)
    }

    @Test("invalid frames produce the documented error", arguments: invalid)
    func invalidFrame(_ v: Vector) {
        switch decodeOne(v.bytes) {
        case .success(let m): Issue.record("decoded as \(String(describing: m)), expected \(v.error!)")
        case .failure(let e):
            #expect(e.kind == v.error, "\(e)")
            #expect(!e.description.isEmpty)
        }
    }

    @Test("an oversized frame is refused from its 8-byte header, before any payload arrives")
    func oversizedFromHeader() {
        var decoder = FrameDecoder(maxPayload: 1 << 20)
        decoder.append([0x00, 0x21, 0x00, 0x00, 0x7F, 0xFF, 0xFF, 0xFF])
        #expect(throws: WireError.frameTooLarge(.pageData, length: 0x7FFF_FFFF, limit: 1 << 20)) { try decoder.next() }
    }
}

@Suite("Frame decoder on arbitrary input")
struct StreamTests {
    static let stream: [UInt8] = VectorTests.valid.flatMap(\.bytes)
    static let messages: [Message] = VectorTests.valid.compactMap { (try? decodeOne($0.bytes).get()) ?? nil }

    @Test("fed one byte at a time, it returns every message once and nil in between")
    func byteByByte() throws {
        var decoder = FrameDecoder()
        var out: [Message] = []
        for b in StreamTests.stream {
            decoder.append([b])
            while let m = try decoder.next() { out.append(m) }
        }
        #expect(out == StreamTests.messages)
        #expect(decoder.bufferedBytes == 0)
    }

    @Test("fed in random chunks (seeded), it returns the same messages", arguments: 0..<20)
    func randomChunks(seed: UInt64) throws {
        var rng = SplitMix(seed: seed)
        var decoder = FrameDecoder()
        var out: [Message] = []
        var i = 0
        let stream = StreamTests.stream
        while i < stream.count {
            let n = min(stream.count - i, 1 + Int(rng.next() % 5000))
            decoder.append(stream[i..<i + n])
            i += n
            while let m = try decoder.next() { out.append(m) }
        }
        #expect(out == StreamTests.messages)
    }

    @Test("every prefix of every frame is 'need more bytes', never an error or a crash")
    func truncations() throws {
        for v in VectorTests.valid {
            for cut in 0..<v.bytes.count {
                var decoder = FrameDecoder()
                decoder.append(v.bytes[0..<cut])
                #expect(try decoder.next() == nil)
            }
        }
    }

    @Test("every single-byte corruption of every frame decodes or throws a WireError, never crashes")
    func corruptions() {
        var decoded = 0, rejected = 0
        for v in VectorTests.valid where v.bytes.count <= 512 {
            for i in 0..<v.bytes.count {
                for flip: UInt8 in [0x01, 0x80, 0xFF] {
                    var bytes = v.bytes
                    bytes[i] ^= flip
                    switch decodeOne(bytes) {
                    case .success(let m?):
                        decoded += 1
                        // Whatever decodes must re-encode to a frame that decodes the same.
                        #expect((try? decodeOne(m.encoded()).get()) == m)
                    case .success(nil): break // a larger length: waits for more bytes
                    case .failure: rejected += 1
                    }
                }
            }
        }
        #expect(decoded > 0 && rejected > 0)
    }
}

/// The tests' deterministic generator, seeded as they always were.
typealias SplitMix = SplitMix64

extension SplitMix64 {
    init(seed: UInt64) { self.init(state: seed &+ 0x9E37_79B9_7F4A_7C15) }
}
