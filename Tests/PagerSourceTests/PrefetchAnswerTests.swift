import Logging
import PagerKernel
@testable import PagerSource
import PagerTransport
import PagerWire
import Testing

@Suite("Prefetch answers on the push connection", .serialized)
struct PrefetchAnswerTests {
    /// A real server (no keys, loopback) with one 64-page region whose pages hold their index.
    final class Served {
        let pages = 64
        let memory: UnsafeMutableRawPointer
        let server: SourceServer
        let thread: KernelThread

        init() throws {
            memory = .allocate(byteCount: pages * basePageSize, alignment: basePageSize)
            for p in 0..<pages { memory.storeBytes(of: UInt64(p) + 1, toByteOffset: p * basePageSize, as: UInt64.self) }
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let region = ServedRegion(id: 1, name: "r", base: UnsafeRawPointer(memory), length: pages * basePageSize)
            server = try SourceServer(listen: Endpoint(host: "127.0.0.1", port: 0), regions: [region], authentication: .insecureNone, logger: logger)
            let s = server
            thread = try KernelThread(name: "test-server") { s.run() }
        }

        deinit {
            server.stop()
            thread.join()
            memory.deallocate()
        }

        /// Joins a connection: a new session (demand), or `session`'s push.
        func join(_ channel: Hello.Channel, session: UInt64 = 0, token: [UInt8] = Array(repeating: 0, count: 16)) throws -> (FrameChannel, Welcome) {
            let c = FrameChannel(try TCPSocket.connect(server.listener.endpoint))
            c.socket.setReceiveTimeout(milliseconds: 30_000)
            try c.send(.hello(Hello(features: [], channel: channel, resumeSession: session, resumeToken: token, clientName: "test")))
            guard case .message(.welcome(let w)) = try c.receive(), case .message(.region) = try c.receive() else {
                throw ChannelError.unexpected(peer: "test", "no WELCOME and REGION")
            }
            return (c, w)
        }
    }

    @Test("a prefetch request on the push connection gets only pages not sent yet (none, once all are pushed), and no second PUSH_COMPLETE; a plain request gets its whole range")
    func onlyUnsent() throws {
        let served = try Served()
        let (demand, welcome) = try served.join(.demand)
        let (push, _) = try served.join(.push, session: welcome.session, token: welcome.resumeToken)
        var pushed = Set<Int>()
        // The push sends every page once, then PUSH_COMPLETE.
        while true {
            let frame = try push.receive()
            if case .message(.pushComplete) = frame { break }
            guard case .pageData(let h, let data) = frame else { Issue.record("unexpected \(frame)"); return }
            #expect(h.flags.contains(.push))
            let first = Int(h.offset) / basePageSize
            for p in first..<first + Int(h.length) / basePageSize {
                #expect(pushed.insert(p).inserted, "page \(p) pushed twice")
                #expect(h.encoding == .zero || data.load(fromByteOffset: (p - first) * basePageSize, as: UInt64.self) == UInt64(p) + 1)
            }
        }
        #expect(pushed.count == served.pages)
        // Everything was sent: a prefetch (request 5) is answered with nothing, so the next page
        // data on the connection is the answer to the plain request (6) for pages 8..<12, and no
        // second PUSH_COMPLETE comes between (it goes once per region and connection).
        try push.send(.pageRequest(PageRequest(requestID: 5, region: 1, offset: UInt64(8 * basePageSize), length: UInt64(16 * basePageSize), flags: .prefetch)))
        try push.send(.pageRequest(PageRequest(requestID: 6, region: 1, offset: UInt64(8 * basePageSize), length: UInt64(4 * basePageSize), flags: [])))
        let next = try push.receive()
        guard case .pageData(let h, let data) = next else { Issue.record("no PAGE_DATA but \(next)"); return }
        #expect(h.requestID == 6 && h.offset == UInt64(8 * basePageSize) && h.length == UInt64(4 * basePageSize))
        #expect(data.load(as: UInt64.self) == 9)
        // A demand request is always answered, sent or not.
        try demand.send(.pageRequest(PageRequest(requestID: 7, region: 1, offset: 0, length: UInt64(basePageSize), flags: .urgent)))
        guard case .pageData(let d, _) = try demand.receive() else { Issue.record("no demand answer"); return }
        #expect(d.requestID == 7 && d.flags.contains(.urgent))
        try demand.send(.goodbye)
    }
}

@Suite("The sparse sender's window frames")
struct WindowFrameTests {
    @Test("a window of data and zero pages: contiguous data merged into one segment, the map bit per data page, the encoding by the mix")
    func mix() {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 8 * 4096, alignment: 4096)
        defer { memory.deallocate() }
        let buffer = UnsafeRawBufferPointer(start: memory, count: 8 * 4096)
        var f = WindowFrame(offset: 0x8000, length: 8 * 4096)
        f.data(UnsafeRawBufferPointer(rebasing: buffer[0..<8192]))
        f.zeros(pages: 1)
        f.data(UnsafeRawBufferPointer(rebasing: buffer[3 * 4096..<4 * 4096]))
        f.data(UnsafeRawBufferPointer(rebasing: buffer[4 * 4096..<5 * 4096])) // follows the last: merged
        f.zeros(pages: 3)
        let h = f.header(requestID: 4, region: 1, flags: .push)
        #expect(h.encoding == .sparse && h.pageMap == [0b11011] && f.dataPages == 4)
        #expect(f.segments.count == 2 && f.segments[1].count == 8192)
        var all = WindowFrame(offset: 0, length: 8192)
        all.data(UnsafeRawBufferPointer(rebasing: buffer[0..<8192]))
        #expect(all.header(requestID: 0, region: 1, flags: []).encoding == .raw)
        var none = WindowFrame(offset: 0, length: 8192)
        none.zeros(pages: 2)
        #expect(none.header(requestID: 0, region: 1, flags: []).encoding == .zero)
    }
}
