@testable import PagerTransport
import PagerKernel
import PagerWire
import Synchronization
import Testing

@Suite("Several threads sending on one FrameChannel")
struct ConcurrentSendTests {
    static let senders = 4
    static let framesPerSender = 20

    /// Each sender's frames: PAGE_DATA of 1 to 24 pages (with checksums on every other one)
    /// between PINGs, all tagged with the sender and sequence so a torn frame shows.
    static func send(_ channel: FrameChannel, sender: Int) throws {
        for i in 0..<framesPerSender {
            let tag = UInt32(sender * 1000 + i)
            let pages = 1 + (i * 7 + sender) % 24
            let data = pattern(tag, pages: pages)
            let header = PageDataHeader(requestID: tag, region: UInt32(sender), offset: UInt64(i) << 24,
                                        length: UInt64(data.count), flags: .push, encoding: .raw)
            try data.withUnsafeBytes { buf in
                try channel.sendPageData(header, checksums: i % 2 == 0 ? checksums(data) : nil, data: buf)
            }
            try channel.send(.ping(token: UInt64(tag), timestamp: UInt64(sender)))
        }
    }

    /// Small kernel buffers make each large `sendmsg` wait for room, which is where another
    /// thread's frame used to land inside it; `maxBytesPerCall` also forces short writes that
    /// the send path must finish before any other frame starts.
    @Test("every frame arrives intact and each sender's frames in order", arguments: [Int.max, 1500])
    func interleaving(maxBytesPerCall: Int) throws {
        let pair = try Pair()
        // The sending side is the raw socket's end: wrap it in a channel too.
        let sending = FrameChannel(pair.raw)
        sending.maxBytesPerSendCall = maxBytesPerCall
        pair.raw.setSendBufferSize(32 << 10)
        pair.channel.socket.setReceiveBufferSize(32 << 10)
        let failures = Mutex<[String]>([])
        let threads = try (0..<ConcurrentSendTests.senders).map { s in
            try KernelThread(name: "test-send\(s)") {
                do { try ConcurrentSendTests.send(sending, sender: s) } catch { failures.withLock { $0.append("\(error)") } }
            }
        }
        // When every sender is done, end the stream: a torn frame then fails the test with a
        // truncation or a malformed frame instead of leaving the reader waiting for bytes.
        let closer = try KernelThread(name: "test-closer") {
            threads.forEach { $0.join() }
            pair.raw.shutdown()
        }
        var next = [Int](repeating: 0, count: ConcurrentSendTests.senders)
        var pings = [Int](repeating: 0, count: ConcurrentSendTests.senders)
        for _ in 0..<(2 * ConcurrentSendTests.senders * ConcurrentSendTests.framesPerSender) {
            let incoming: Incoming
            do { incoming = try pair.channel.receive() } catch { Issue.record("receive: \(error)"); break }
            switch incoming {
            case .pageData(let h, let data):
                let sender = Int(h.region), i = Int(h.requestID) % 1000
                #expect(i == next[sender], "sender \(sender): frame \(i) after \(next[sender] - 1)")
                #expect(Array(data) == pattern(h.requestID, pages: 1 + (i * 7 + sender) % 24), "frame \(h.requestID) torn")
                next[sender] = i + 1
            case .message(.ping(let token, let sender)):
                #expect(Int(token) % 1000 == pings[Int(sender)])
                pings[Int(sender)] += 1
            case .message(let m):
                Issue.record("unexpected \(m)")
            }
        }
        // A reader that stopped early must not leave senders blocked on a full buffer.
        pair.channel.shutdown()
        closer.join()
        #expect(failures.withLock { $0 } == [])
        #expect(next == [Int](repeating: ConcurrentSendTests.framesPerSender, count: ConcurrentSendTests.senders))
        #expect(pings == next)
    }
}
