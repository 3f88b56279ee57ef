@testable import PagerTransport
import PagerKernel
import PagerWire
import Testing

@Suite("FrameChannel over loopback TCP")
struct FrameChannelTests {
    /// Receives `count` frames, then expects the stream to end cleanly.
    static func receiveAll(_ channel: FrameChannel, count: Int) throws -> [Received] {
        var out: [Received] = []
        for _ in 0..<count { out.append(Received(try channel.receive())) }
        return out
    }

    @Test("frames written in fragments of any size arrive whole and in order", arguments: [[1], [3, 1, 7], [4095, 13, 65537], [1 << 20]])
    func fragmented(pieces: [Int]) throws {
        let pair = try Pair()
        let messages = sampleMessages()
        let stream = messages.flatMap { $0.encoded() }
        let writer = try KernelThread(name: "test-writer") {
            try? pair.write(stream, pieces: pieces)
            pair.raw.shutdown()
        }
        defer { writer.join() }
        let got = try FrameChannelTests.receiveAll(pair.channel, count: messages.count)
        #expect(got == messages.map(Received.init(sent:)))
        do {
            _ = try pair.channel.receive()
            Issue.record("a frame after the last one")
        } catch {
            guard case .closed = error else { Issue.record("expected closed, got \(error)"); return }
        }
    }

    @Test("an end of stream between frames is closed; inside one it is truncated, saying how far into which frame",
          arguments: [(3, nil, 8), (8, MessageType.pageData, 4136), (40, .pageData, 4136), (140, .pageData, 4136), (4135, .pageData, 4136)])
    func endOfStream(cut: Int, type: MessageType?, expected: Int) throws {
        let frame = Message.pageData(PageData(requestID: 1, region: 1, offset: 0, length: 4096, flags: [], encoding: .raw,
                                              data: pattern(5, pages: 1))).encoded()
        #expect(frame.count == expected || type == nil)
        let pair = try Pair()
        try pair.write(Message.ping(token: 1, timestamp: 2).encoded() + frame.prefix(cut), pieces: [1 << 20])
        pair.raw.shutdown()
        #expect(Received(try pair.channel.receive()) == .message(.ping(token: 1, timestamp: 2)))
        do {
            _ = try pair.channel.receive()
            Issue.record("a truncated frame was returned")
        } catch {
            guard case .truncated(_, let frameType, let received, let of) = error else { Issue.record("\(error)"); return }
            #expect(frameType == type && received == cut && of == expected)
            #expect("\(error)".contains("after \(cut) of its \(expected) bytes"))
        }
    }

    @Test("a frame announcing more than the receive limit is refused from its header, before its payload is sent")
    func oversized() throws {
        let pair = try Pair()
        pair.channel.receiveLimit = 64 << 10
        // Only the header: if the channel waited for the payload, this test would hang.
        try pair.write([0x00, 0x21, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00], pieces: [8])
        #expect {
            _ = try pair.channel.receive()
        } throws: { error in
            guard case ChannelError.malformed(_, .frameTooLarge(.pageData, 0x20000, 64 << 10)) = error else { return false }
            return true
        }
    }

    @Test("PAGE_DATA whose checksum does not match is refused, naming the page")
    func checksumMismatch() throws {
        let pair = try Pair()
        let data = pattern(3, pages: 4)
        var sums = checksums(data)
        sums[2] ^= 1
        let frame = Message.pageData(PageData(requestID: 4, region: 9, offset: 0x40000, length: 4 * 4096, flags: .urgent,
                                              encoding: .raw, checksums: sums, data: data)).encoded()
        try pair.write(frame + Message.ping(token: 1, timestamp: 1).encoded(), pieces: [100, 5000])
        #expect {
            _ = try pair.channel.receive()
        } throws: { error in
            guard case ChannelError.checksumMismatch(_, 9, 0x42000) = error else { return false }
            return true
        }
    }

    @Test("a bad PAGE_DATA fixed part is refused before its page bytes arrive")
    func refusedFromFixedPart() throws {
        let pair = try Pair()
        var frame = Message.pageData(PageData(requestID: 4, region: 9, offset: 0, length: 8192, flags: [], encoding: .raw,
                                              data: pattern(1, pages: 2))).encoded()
        frame[FrameHeader.size + 24] = 7 // the encoding byte: undefined
        // Header and fixed part only: waiting for the page bytes would hang.
        try pair.write(Array(frame.prefix(40)), pieces: [40])
        #expect {
            _ = try pair.channel.receive()
        } throws: { error in
            guard case ChannelError.malformed(_, .fieldOutOfRange(.pageData, "encoding", 7, _)) = error else { return false }
            return true
        }
    }
}
