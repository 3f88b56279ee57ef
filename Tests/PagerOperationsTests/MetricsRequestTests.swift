import PagerOperations
import PagerOperationsCore
import Testing

@Suite("The metrics endpoint's HTTP requests")
struct MetricsRequestTests {
    static func head(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test("GET and HEAD of /metrics (a query string ignored); other paths 404, other methods 405, garbage 400", arguments: [
        ("GET /metrics HTTP/1.1", MetricsRequest.metrics(headOnly: false)),
        ("GET /metrics?x=1 HTTP/1.0", .metrics(headOnly: false)),
        ("HEAD /metrics HTTP/1.1", .metrics(headOnly: true)),
        ("GET / HTTP/1.1", .notFound),
        ("GET /metricsx HTTP/1.1", .notFound),
        ("POST /metrics HTTP/1.1", .methodNotAllowed),
        ("GET /metrics", .badRequest("malformed request line")),
        ("GET  /metrics HTTP/1.1", .badRequest("malformed request line")),
        ("GET /metrics SPDY/3", .badRequest("malformed request line")),
        ("", .badRequest("malformed request line")),
    ])
    func requestLines(line: String, expected: MetricsRequest) {
        #expect(MetricsRequest(head: Self.head(line + "\r\nHost: x\r\n")) == expected)
        #expect(MetricsRequest(head: Self.head(line + "\nHost: x")) == expected, "LF line ends too")
    }

    @Test("the head ends at the blank line, CRLF or LF; not before it has arrived")
    func headEnd() {
        #expect(MetricsRequest.headEnd(Self.head("GET / HTTP/1.1\r\nA: b\r\n\r\nbody")) == 21)
        #expect(MetricsRequest.headEnd(Self.head("GET / HTTP/1.1\n\n")) == 14)
        #expect(MetricsRequest.headEnd(Self.head("GET / HTTP/1.1\r\nA: b\r\n")) == nil)
        #expect(MetricsRequest.headEnd(Self.head("GET / HTTP/1.1\r\nA: b\r\n\r")) == nil)
    }

    @Test("responses: Content-Length is the body's size; HEAD has no body; no head at all is a 400")
    func responses() {
        let metrics = "# TYPE a gauge\na 1\n"
        let ok = MetricsRequest.response(to: Self.head("GET /metrics HTTP/1.1"), metrics: { metrics })
        #expect(ok.hasPrefix("HTTP/1.1 200 OK\r\n") && ok.contains("Content-Length: \(metrics.utf8.count)\r\n") && ok.hasSuffix("\r\n\r\n" + metrics))
        #expect(ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"))
        let head = MetricsRequest.response(to: Self.head("HEAD /metrics HTTP/1.1"), metrics: { metrics })
        #expect(head.hasSuffix("Connection: close\r\n\r\n") && head.contains("Content-Length: \(metrics.utf8.count)"))
        #expect(MetricsRequest.response(to: nil, metrics: { metrics }).hasPrefix("HTTP/1.1 400 "))
        #expect(MetricsRequest.response(to: Self.head("PUT /metrics HTTP/1.1"), metrics: { metrics }).contains("Allow: GET, HEAD\r\n"))
    }
}
