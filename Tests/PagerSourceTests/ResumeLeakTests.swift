import Glibc
import PagerDestination
import PagerKernel
import PagerTransport
import PagerWire
import Testing
@testable import PagerSource

/// Resumes against a real server on loopback: what each one replaces ends, and nothing
/// accumulates (threads, descriptors) however many come.
@Suite("Resuming a session, many times", .serialized)
struct ResumeLeakTests {
    @Test("100 resumes of one session: each replaces both connections (the old ones are shut down), pages still come, and afterwards no thread or descriptor is left")
    func hundredResumes() throws {
        let source = try LoopbackSource()
        let client = try source.fetchPage(5)
        let descriptorsBefore = openDescriptorCount()
        var demand: any FrameConnection = client.demand
        var push: (any FrameConnection)? = client.push
        for i in 0..<100 {
            let (newDemand, newPush) = try client.resumer.resume(push: true, timeoutMilliseconds: 5_000)
            // The source replaced the old connections: each ends (closed or reset), at once.
            #expect(ends(demand), "round \(i): the replaced demand connection ends")
            #expect(push.map(ends) ?? false, "round \(i): the replaced push connection ends (after what was pushed before)")
            demand = newDemand
            push = newPush
            try expectPage(UInt64(i % LoopbackSource.pages), on: demand, requestID: UInt32(i + 10))
        }
        #expect(source.server.waitUntilConnections(atMost: 2, withinNanoseconds: 30_000_000_000), "only the last two connections have threads")
        #expect(source.server.counts.resumes == 200, "\(source.server.counts)")
        // The old connections' sockets closed on both sides. A leak would leave at least 2
        // per resume (200 here); suites running alongside in this process open a few of their
        // own, hence the slack of 10.
        #expect(openDescriptorCount() <= descriptorsBefore + 10, "descriptors: \(descriptorsBefore) before, \(openDescriptorCount()) after")
        try demand.send(.goodbye)
        push?.shutdown()
        #expect(throws: ChannelError.self) { _ = try demand.receive() }
        #expect(source.server.waitUntilConnections(atMost: 0, withinNanoseconds: 30_000_000_000), "every connection's thread ended")
        #expect(source.server.activeSessions == 0, "the session ended with its GOODBYE")
        #expect(source.server.counts.failedSessions == 0 && source.server.counts.lingerExpired == 0, "\(source.server.counts)")
    }

    @Test("a session whose connections are lost lingers, then ends as not resumed; a resume after that is refused with unexpected-message")
    func lingerExpires() throws {
        let source = try LoopbackSource { $0.sessionLingerNanoseconds = 200_000_000 }
        let client = try source.fetchPage(1)
        client.close() // no GOODBYE: lost, as a network failure would look
        #expect(source.server.waitUntilConnections(atMost: 0, withinNanoseconds: 30_000_000_000), "the linger ended")
        let c = source.server.counts
        #expect(c.lingerExpired == 1 && c.failedSessions == 1 && source.server.activeSessions == 0, "\(c)")
        do {
            _ = try client.resumer.resume(push: true, timeoutMilliseconds: 5_000)
            Issue.record("a session past its linger time was resumed")
        } catch let ChannelError.peerError(_, e) {
            #expect(e.code == .unexpectedMessage || e.code == .authenticationFailed, "\(e)")
        }
    }

    @Test("RECEIVED naming a region not served, or a range past its end, ends the session with the precise ERROR", arguments: [
        (Received(region: 9, ranges: [PageRange(offset: 0, length: 4096)]), ErrorCode.unknownRegion, "RECEIVED for region 9, which is not served"),
        (Received(region: 1, ranges: [PageRange(offset: 0, length: 1 << 30)]), ErrorCode.outOfRange, "RECEIVED range 0x0+0x40000000 passes the end of region 1"),
    ])
    func receivedRefused(_ received: Received, code: ErrorCode, words: String) throws {
        let source = try LoopbackSource()
        let client = try source.fetchPage(2)
        defer { client.close() }
        client.push.socket.setReceiveTimeout(milliseconds: 10_000) // no ERROR: fails, never hangs
        try client.push.send(.received(received))
        // Pushed pages may come first; then the ERROR (which the channel throws).
        do {
            for _ in 0..<100_000 { _ = try client.push.receive() }
            Issue.record("no ERROR for \(received)")
        } catch ChannelError.peerError(_, let e) {
            #expect(e.code == code && e.message.contains(words), "\(e)")
        }
    }

    /// Whether `connection` ends (closed or reset) within what the source had sent on it.
    private func ends(_ connection: any FrameConnection) -> Bool {
        for _ in 0..<100_000 {
            do { _ = try connection.receive() } catch { return true }
        }
        return false
    }

    /// Page `page` of the loopback region, asked for on `demand`, has its own bytes.
    private func expectPage(_ page: UInt64, on demand: any FrameConnection, requestID: UInt32) throws {
        try demand.send(.pageRequest(PageRequest(requestID: requestID, region: 1, offset: page * UInt64(basePageSize),
                                                  length: UInt64(basePageSize), flags: .urgent)))
        guard case .pageData(let h, let data) = try demand.receive() else {
            throw ChannelError.unexpected(peer: demand.peer, "no PAGE_DATA")
        }
        #expect(h.requestID == requestID && data.load(as: UInt64.self) == page + 1)
    }
}

/// Descriptors this process has open (entries of /proc/self/fd, less the one reading it).
func openDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { count += 1 }
    }
    return count - 1
}
