import Glibc
import PagerKernel
import SystemPackage

/// `--metrics-listen ADDR:PORT`: answers `GET /metrics` with the daemon's metrics in the text
/// exposition format, over HTTP/1.1 with `Connection: close`. One thread, a connection at a
/// time, each given 2 s to send its request: a scraper is one client every few seconds, and
/// nothing here is on the page path (the metrics are read from atomics and snapshots).
public final class MetricsEndpoint: @unchecked Sendable {
    private let listener: TCPListener
    private let metrics: @Sendable () -> String
    private var thread: KernelThread?

    public var endpoint: Endpoint { listener.endpoint }

    public init(listen: Endpoint, metrics: @escaping @Sendable () -> String) throws(KernelError) {
        listener = try TCPListener(listen, backlog: 64)
        self.metrics = metrics
    }

    public func start() throws(KernelError) {
        thread = try KernelThread(name: "metrics-http") { [self] in serve() }
    }

    public func stop() {
        listener.shutdown()
        thread?.join()
        thread = nil
    }

    private func serve() {
        while true {
            guard let connection = try? listener.accept() else { return }
            connection.setReceiveTimeout(milliseconds: 2_000)
            let reply = MetricsEndpoint.response(to: MetricsEndpoint.readRequest(connection), metrics: metrics)
            let bytes = Array(reply.utf8)
            _ = try? bytes.withUnsafeBytes { try connection.writeAll([$0]) }
            connection.shutdown()
        }
    }

    /// The request head (up to the blank line, at most 8 KiB), or nil if none came whole.
    static func readRequest(_ connection: TCPSocket) -> [UInt8]? {
        var head: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 2048)
        while head.count < MetricsRequest.maxHead {
            let n = (try? buffer.withUnsafeMutableBytes { try connection.readSome(into: $0.baseAddress!, count: $0.count) }) ?? 0
            if n <= 0 { return nil }
            head += buffer[..<n]
            if let end = MetricsRequest.headEnd(head) { return Array(head[..<end]) }
        }
        return nil
    }

    /// The whole HTTP response to a request head (nil: none arrived, or it was too long).
    public static func response(to head: [UInt8]?, metrics: () -> String) -> String {
        func reply(_ status: String, _ type: String, _ body: String, extra: String = "") -> String {
            "HTTP/1.1 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(body.utf8.count)\r\n\(extra)Connection: close\r\n\r\n\(body)"
        }
        let text = "text/plain; charset=utf-8"
        switch MetricsRequest(head: head) {
        case .metrics(headOnly: let headOnly):
            let full = reply("200 OK", Exposition.contentType, metrics())
            guard headOnly, let blank = full.utf8.firstRange(of: Array("\r\n\r\n".utf8)) else { return full }
            return String(decoding: full.utf8[..<blank.upperBound], as: UTF8.self)
        case .badRequest(let why): return reply("400 Bad Request", text, why + "\n")
        case .methodNotAllowed: return reply("405 Method Not Allowed", text, "only GET /metrics\n", extra: "Allow: GET, HEAD\r\n")
        case .notFound: return reply("404 Not Found", text, "the metrics are at /metrics\n")
        }
    }
}

/// What a request head sent to the metrics endpoint asks for (outside input: every byte
/// sequence gives one of these, nothing else).
public enum MetricsRequest: Equatable, Sendable {
    /// `GET /metrics` (a query string is ignored); `HEAD`: the headers only.
    case metrics(headOnly: Bool)
    case badRequest(String)
    case methodNotAllowed
    case notFound

    /// The most a request head may hold.
    public static let maxHead = 8192

    /// Where the head ends in `bytes`: the index of the newline before its blank line (LF LF
    /// or LF CR LF), or nil while that has not arrived.
    public static func headEnd(_ bytes: [UInt8]) -> Int? {
        for i in bytes.indices where bytes[i] == 0x0A {
            if i + 1 < bytes.count, bytes[i + 1] == 0x0A { return i }
            if i + 2 < bytes.count, bytes[i + 1] == 0x0D, bytes[i + 2] == 0x0A { return i }
        }
        return nil
    }

    /// Reads the request line of `head` (the bytes before its blank line).
    public init(head: [UInt8]?) {
        guard let head else {
            self = .badRequest("no complete HTTP request head within 2 s and \(MetricsRequest.maxHead) bytes")
            return
        }
        // By bytes: in a Swift String "\r\n" is one character, which no split on "\n" finds.
        var line = head.split(separator: 0x0A, maxSplits: 1, omittingEmptySubsequences: false).first ?? []
        if line.last == 0x0D { line = line.dropLast() }
        let parts = line.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[2].starts(with: Array("HTTP/1.".utf8)), !parts[0].isEmpty, !parts[1].isEmpty else {
            self = .badRequest("malformed request line")
            return
        }
        let method = String(decoding: parts[0], as: UTF8.self)
        guard method == "GET" || method == "HEAD" else {
            self = .methodNotAllowed
            return
        }
        let target = parts[1].split(separator: UInt8(ascii: "?"), maxSplits: 1, omittingEmptySubsequences: false).first ?? []
        self = target.elementsEqual(Array("/metrics".utf8)) ? .metrics(headOnly: method == "HEAD") : .notFound
    }
}

/// node_exporter's textfile collector (`--metrics-textfile PATH`): the metrics written to a
/// temporary file next to PATH and renamed over it, so the collector never reads half a file.
public enum MetricsTextfile {
    public static func write(_ text: String, to path: String) throws(KernelError) {
        let temporary = path + ".\(processID()).tmp"
        try writeWholeFile(temporary, text)
        if rename(temporary, path) != 0 {
            let e = Errno(rawValue: Glibc.errno)
            unlink(temporary)
            throw KernelError("rename", e, detail: "\(temporary) to \(path)")
        }
    }
}
