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
    static func readRequest(_ connection: TCPSocket) -> String? {
        var head: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 2048)
        while head.count < 8192 {
            let n = (try? buffer.withUnsafeMutableBytes { try connection.readSome(into: $0.baseAddress!, count: $0.count) }) ?? 0
            if n <= 0 { return nil }
            head += buffer[..<n]
            if let end = head.firstRange(of: Array("\r\n\r\n".utf8)) ?? head.firstRange(of: Array("\n\n".utf8)) {
                return String(decoding: head[..<end.lowerBound], as: UTF8.self)
            }
        }
        return nil
    }

    /// The whole HTTP response to a request head (nil: none arrived, or it was too long).
    static func response(to head: String?, metrics: () -> String) -> String {
        func reply(_ status: String, _ type: String, _ body: String, extra: String = "") -> String {
            "HTTP/1.1 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(body.utf8.count)\r\n\(extra)Connection: close\r\n\r\n\(body)"
        }
        // By bytes: in a Swift String "\r\n" is one character, which no split on "\n" finds.
        guard let head, let line = head.utf8.split(separator: UInt8(ascii: "\n"), maxSplits: 1).first else {
            return reply("400 Bad Request", "text/plain; charset=utf-8", "no complete HTTP request head within 2 s and 8 KiB\n")
        }
        let requestLine = String(decoding: line.last == UInt8(ascii: "\r") ? line.dropLast() : line, as: UTF8.self)
        let parts = requestLine.split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            return reply("400 Bad Request", "text/plain; charset=utf-8", "malformed request line\n")
        }
        guard parts[0] == "GET" || parts[0] == "HEAD" else {
            return reply("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET /metrics\n", extra: "Allow: GET, HEAD\r\n")
        }
        let target = parts[1].split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        guard target == "/metrics" else {
            return reply("404 Not Found", "text/plain; charset=utf-8", "the metrics are at /metrics\n")
        }
        let full = reply("200 OK", Exposition.contentType, metrics())
        if parts[0] == "HEAD", let blank = full.firstRange(of: "\r\n\r\n") { return String(full[..<blank.upperBound]) }
        return full
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
