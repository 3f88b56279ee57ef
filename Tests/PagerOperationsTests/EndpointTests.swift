import Glibc
import PagerHandoff
import PagerKernel
import PagerOperations
import PagerOperationsCore
import Testing

@Suite("The control socket and the metrics endpoint, on real sockets", .serialized)
struct EndpointTests {
    func scratchPath(_ name: String) -> String { "/tmp/pager-ops-\(processID())-\(name)" }

    @Test("status over the control socket: the answer to a known request, an error line to another; mode 0660; the file is gone after stop")
    func controlSocket() throws {
        let path = scratchPath("control.sock")
        let server = try ControlServer(path: path) { $0 == "status" ? #"{"role":"test"}"# : nil }
        try server.start()
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o660)
        #expect(try ControlClient.request("status", path: path) == #"{"role":"test"}"#)
        #expect(try ControlClient.request("reboot", path: path).hasPrefix("error: unknown request \"reboot\""))
        // A client that connects and says nothing is given up on; the next one is served.
        let silent = try UnixSocket.connect(path: path)
        defer { try? silent.close() }
        #expect(try ControlClient.request("status", path: path, timeoutMilliseconds: 3_000) == #"{"role":"test"}"#)
        server.stop()
        #expect(access(path, F_OK) != 0)
        #expect(throws: ControlError.self) { try ControlClient.request("status", path: path) }
    }

    @Test("GET /metrics over TCP on loopback; a stalled client does not keep the next scrape waiting past its 2 s")
    func metricsEndpoint() throws {
        let endpoint = try MetricsEndpoint(listen: Endpoint(host: "127.0.0.1", port: 0), metrics: { "# TYPE a gauge\na 1\n" })
        try endpoint.start()
        defer { endpoint.stop() }
        let stalled = try TCPSocket.connect(endpoint.endpoint)
        defer { stalled.shutdown() }
        let socket = try TCPSocket.connect(endpoint.endpoint, timeoutMilliseconds: 1_000)
        let request = Array("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".utf8)
        try request.withUnsafeBytes { try socket.writeAll([$0]) }
        socket.setReceiveTimeout(milliseconds: 5_000)
        var reply: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = try buffer.withUnsafeMutableBytes { try socket.readSome(into: $0.baseAddress!, count: $0.count) }
            if n <= 0 { break }
            reply += buffer[..<n]
        }
        let text = String(decoding: reply, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n") && text.hasSuffix("\r\n\r\n# TYPE a gauge\na 1\n"), "\(text)")
    }

    @Test("the textfile is written whole under its name (through a temporary file renamed over it)")
    func textfile() throws {
        let path = scratchPath("pager.prom")
        defer { unlink(path) }
        try MetricsTextfile.write("a 1\n", to: path)
        try MetricsTextfile.write("a 2\n", to: path)
        #expect(try readWholeFile(path) == "a 2\n")
        #expect(access(path + ".\(processID()).tmp", F_OK) != 0)
    }

    @Test("pagerd status's text: a destination's migration and a source's sessions, from documents as the daemons write them")
    func statusText() throws {
        let dest = try JSONReader.parse(Array(#"""
        {"role":"dest","version":"v","pid":7,"uptime-ms":1500,"source":"1.2.3.4:7070","migrations":[{"id":1,"status":"postcopy-active","region":"vm.ram","session":"0x1","total-time":500,"ram":{"total":1048576,"remaining":524288,"transferred":600000,"page-size":4096,"normal":100,"duplicate":28,"precopy-bytes":0,"mbps":9.6,"postcopy-requests":5},"pages-local":128,"faults":6,"prefetch-requests":3,"duplicates-dropped":0,"pages-arrived":{"demand":0,"prefetch":0,"push":0,"staged":0},"postcopy-latency":80,"postcopy-latency-dist":[],"fault-latency-us":{"p50-below":128,"p99-below":256,"max-below":256},"outages":1,"resumes":1,"pages-poisoned":0}],"totals":{"migrations":1,"active":1,"completed":0,"failed":0}}
        """#.utf8), limits: .status)
        let text = StatusText.render(dest)
        #expect(text.contains("dest (pid 7), v, up 1.5 s, source 1.2.3.4:7070"), "\(text)")
        #expect(text.contains("migration 1: postcopy-active, region \"vm.ram\"") && text.contains("50.0% local") && text.contains("p50 < 128 µs"), "\(text)")
        #expect(text.contains("outages     1, 1 resumed"), "\(text)")
        let source = try JSONReader.parse(Array(#"""
        {"role":"source","version":"v","pid":8,"uptime-ms":10,"listen":"0.0.0.0:7070","regions":[{"id":1,"name":"vm.ram","bytes":2097152,"page-size":2097152,"live":false}],"sessions":[{"session":"0x2","peer":"5.6.7.8:1","status":"lingering","encrypted":true,"resumes":2,"postcopy-requests":1,"prefetch-requests":2,"ram":{"transferred":1048576,"zero-bytes":0,"resent-bytes":0}}],"totals":{"sessions":1,"failed-sessions":0,"transferred":1048576,"zero-bytes":0,"resumes":2}}
        """#.utf8), limits: .status)
        let s = StatusText.render(source)
        #expect(s.contains("region 1 \"vm.ram\": 2.0 MiB in 2 MiB pages") && s.contains("session 0x2 with 5.6.7.8:1: lingering, 1.0 MiB sent"), "\(s)")
        // Whatever a daemon (or something else on the socket) answers, the text is made.
        _ = StatusText.render(.array([.null, .string("x")]))
        _ = StatusText.render(.object([("migrations", .array([.number("1")])), ("sessions", .string("no"))]))
    }
}
