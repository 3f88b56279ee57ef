// libFuzzer target for what the operators' interfaces read from outside: the metrics
// endpoint's HTTP request heads (from any host that can connect) and `pagerd status`'s reading
// of whatever answers on a control socket.
//
//   swift build -c debug --sanitize fuzzer --sanitize address --product PagerOperationsFuzz -Xswiftc -DFUZZING \
//       -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp \
//       --scratch-path .build-fuzz
//   .build-fuzz/debug/PagerOperationsFuzz -max_total_time=60 Protocols/operations-corpus
//
// Without -DFUZZING the same code builds as a replay tool (`PagerOperationsFuzz FILE...`).

import PagerHandoff
import PagerOperationsCore

/// Feeds `bytes` to the request parser and the status reader and checks the invariants: the
/// head ends where it ends however the bytes arrive (whole, in pieces, byte by byte); every
/// head gets one well-formed response whose Content-Length is its body's size; a status
/// document that parses renders as text.
func exercise(_ bytes: [UInt8]) {
    let end = MetricsRequest.headEnd(bytes)
    if let end { precondition(end < bytes.count && bytes[end] == 0x0A, "the head ends at a newline") }
    // As the endpoint reads it: growing, stopping at the first head end.
    var seen: [UInt8] = []
    var found: Int?
    for b in bytes {
        seen.append(b)
        if let e = MetricsRequest.headEnd(seen) { found = e; break }
    }
    precondition(found == end, "reading piecewise found another head end")
    let head = end.map { Array(bytes[..<$0]) }
    let response = MetricsRequest.response(to: head, metrics: { "# TYPE a gauge\na 1\n" })
    let utf8 = Array(response.utf8)
    guard let blank = utf8.firstRange(of: Array("\r\n\r\n".utf8)) else { preconditionFailure("a response without its blank line") }
    let headers = String(decoding: utf8[..<blank.lowerBound], as: UTF8.self)
    precondition(headers.hasPrefix("HTTP/1.1 "), "status line")
    guard let length = headers.split(separator: "\r\n").first(where: { $0.hasPrefix("Content-Length: ") }).flatMap({ Int($0.dropFirst(16)) }) else {
        preconditionFailure("no Content-Length")
    }
    let body = utf8.count - blank.upperBound
    if case .metrics(headOnly: true) = MetricsRequest(head: head) { precondition(body == 0, "HEAD with a body") } else { precondition(body == length, "Content-Length is not the body's size") }
    if let doc = try? JSONReader.parse(bytes, limits: .status) { _ = StatusText.render(doc) }
}

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    exercise(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
#else
import PagerKernel

@main
struct Replay {
    static func main() { replayFuzzInputs(tool: "PagerOperationsFuzz") { exercise($0) } }
}
#endif
