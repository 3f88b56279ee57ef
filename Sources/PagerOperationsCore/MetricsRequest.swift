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

extension MetricsRequest {
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
