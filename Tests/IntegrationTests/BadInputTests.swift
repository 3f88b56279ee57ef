import Glibc
import PagerHarness
import PagerKernel
import PagerTransport
import PagerTrust
import PagerWire
import Testing

/// A `pagerd source` process on loopback serving a small file with the test key, for
/// protocol abuse (`arguments` replaces `--key-file` when given).
final class SourceUnderTest {
    let scratch = Scratch()
    let process: ChildProcess
    let endpoint: Endpoint

    init(_ arguments: [String]? = nil) throws {
        let ram = scratch.file("small.ram")
        try sh(Binaries.workload, "fill", "--file", ram, "--size-mib", "4", "--seed", "3")
        // Port 0: several sources of several suites run at once; the log names the port.
        process = try ChildProcess(Binaries.pagerd, ["source", "--listen", "127.0.0.1:0", "--region", ram, "--handshake-timeout-s", "0.5"]
                                       + (arguments ?? ["--key-file", scratch.keyFile]),
                                   outputPath: scratch.file("source.log"))
        try waitFor(process, toPrint: "serving 1 region")
        let line = process.output.split(separator: "\n").first { $0.contains("serving 1 region(s) on 127.0.0.1:") } ?? ""
        let port = line.split(separator: "127.0.0.1:").last.flatMap { UInt16($0.prefix { $0.isNumber }) }
        guard let port, port != 0 else { throw HarnessError("no port in the source's log: \(process.output)") }
        endpoint = Endpoint(host: "127.0.0.1", port: port)
    }

    deinit {
        process.signal(SIGTERM)
        process.wait(timeoutMilliseconds: 5000)
    }

    /// A fresh connection that has completed the handshake with `key` (the source's own by
    /// default), every step checked.
    func session(key: PresharedKey = TestKeys.key) throws -> FrameChannel {
        let channel = FrameChannel(try TCPSocket.connect(endpoint))
        var authenticator = try ClientAuthenticator(key: key)
        try channel.send(.hello(authenticator.hello(Hello(features: [.checksums], clientName: "test"))))
        guard case .message(.authChallenge(let nonce, let share)) = try channel.receive() else { throw HarnessError("no AUTH_CHALLENGE") }
        try channel.send(try authenticator.respond(challengeNonce: nonce, share: share, resumeToken: Array(repeating: 0, count: 16)))
        guard case .message(.welcome(let w)) = try channel.receive(), w.regionCount == 1,
              case .message(.region(let r)) = try channel.receive(), r.length == 4 << 20 else {
            throw HarnessError("bad handshake")
        }
        authenticator.received(.welcome(w))
        authenticator.received(.region(r))
        guard case .message(.authConfirm(let mac)) = try channel.receive() else { throw HarnessError("no AUTH_CONFIRM") }
        _ = try authenticator.confirm(mac: mac)
        return channel
    }

    /// Asks a fresh session for one page and checks it arrived with its checksum: the server
    /// still serves others.
    func stillServes() throws -> Bool {
        let channel = try session()
        try channel.send(.pageRequest(PageRequest(requestID: 1, region: 1, offset: 0x1000, length: 0x1000, flags: .urgent)))
        guard case .pageData(let h, let data) = try channel.receive() else { return false }
        try channel.send(.goodbye)
        return h.requestID == 1 && h.offset == 0x1000 && data.count == 4096 && h.flags.contains(.checksums)
    }
}

@Suite("The source under bad input", .serialized, .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct BadInputTests {
    @Test("a wrong protocol version is refused with unsupported-version, naming both ranges")
    func wrongVersion() throws {
        let source = try SourceUnderTest()
        let channel = FrameChannel(try TCPSocket.connect(source.endpoint))
        try channel.send(.hello(Hello(minVersion: 2, maxVersion: 3, features: [], clientName: "future")))
        let e = try #require(try channel.nextError())
        #expect(e.code == .unsupportedVersion)
        #expect(e.message.contains("1-1") && e.message.contains("2-3"), "\(e.message)")
        #expect(try source.stillServes())
    }

    @Test("garbage instead of a frame ends that session with malformed-frame; others go on")
    func garbage() throws {
        let source = try SourceUnderTest()
        let socket = try TCPSocket.connect(source.endpoint)
        let junk = Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
        try junk.withUnsafeBytes { try socket.writeAll([$0]) }
        let e = try #require(try FrameChannel(socket).nextError())
        #expect(e.code == .malformedFrame)
        #expect(e.message.contains("unknown message type"), "\(e.message)")
        #expect(try source.stillServes())
    }

    @Test("requests for an unknown region or past the end fail with their request id; the session continues")
    func badRequests() throws {
        let source = try SourceUnderTest()
        let channel = try source.session()
        try channel.send(.pageRequest(PageRequest(requestID: 7, region: 9, offset: 0, length: 4096, flags: .urgent)))
        var e = try #require(try channel.nextError())
        #expect(e.code == .unknownRegion && e.requestID == 7, "\(e)")
        try channel.send(.pageRequest(PageRequest(requestID: 8, region: 1, offset: 4 << 20, length: 4096, flags: .urgent)))
        e = try #require(try channel.nextError())
        #expect(e.code == .outOfRange && e.requestID == 8, "\(e)")
        try channel.send(.pageRequest(PageRequest(requestID: 9, region: 1, offset: (4 << 20) - 4096, length: 8192, flags: .urgent)))
        e = try #require(try channel.nextError())
        #expect(e.code == .outOfRange && e.requestID == 9, "\(e)")
        // The same session still answers a good request.
        try channel.send(.pageRequest(PageRequest(requestID: 10, region: 1, offset: 0, length: 4096, flags: .urgent)))
        guard case .pageData(let h, _) = try channel.receive() else { Issue.record("no data"); return }
        #expect(h.requestID == 10)
    }

    @Test("a frame announcing 1 GiB is refused from its header, nothing is buffered")
    func oversized() throws {
        let source = try SourceUnderTest()
        let socket = try TCPSocket.connect(source.endpoint)
        let header: [UInt8] = [0x00, 0x01, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00]
        try header.withUnsafeBytes { try socket.writeAll([$0]) }
        let e = try #require(try FrameChannel(socket).nextError())
        #expect(e.code == .malformedFrame && e.message.contains("limit"), "\(e.message)")
        #expect(try source.stillServes())
    }

    @Test("a peer that vanishes mid-frame, and one that stalls without HELLO, do not stop the server")
    func vanishAndStall() throws {
        let source = try SourceUnderTest()
        do {
            let socket = try TCPSocket.connect(source.endpoint)
            let half = Array(Message.hello(Hello(features: [], clientName: "half")).encoded().prefix(20))
            try half.withUnsafeBytes { try socket.writeAll([$0]) }
        } // closed here, mid-frame
        let staller = try TCPSocket.connect(source.endpoint) // says nothing
        #expect(try source.stillServes(), "served while a peer stalls")
        // The staller is disconnected after the handshake timeout (500 ms here).
        var buffer = [UInt8](repeating: 0, count: 64)
        #expect(try staller.waitReadable(timeoutMilliseconds: 5000))
        let n = try buffer.withUnsafeMutableBytes { try staller.readAvailable(into: $0) }
        #expect(n != 0, "closed or answered with an error")
        #expect(source.process.wait(timeoutMilliseconds: 0) == nil, "the server is still running")
        #expect(try source.stillServes())
    }
}
