// libFuzzer target for the handoff decoders (Protocols/handoff.md).
//
//   swift build -c debug --sanitize fuzzer --sanitize address --product PagerHandoffFuzz -Xswiftc -DFUZZING \
//       -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp \
//       --scratch-path .build-fuzz
//   .build-fuzz/debug/PagerHandoffFuzz -max_total_time=60 Protocols/handoff-corpus
//
// Without -DFUZZING the same code builds as a replay tool (`PagerHandoffFuzz FILE...`), so a
// plain `swift build` links and a crash input can be replayed under a debugger.

import PagerHandoff

/// Feeds `bytes` to every handoff decoder and checks the invariants: JSON that parses writes
/// back to JSON that parses to the same value (and writes the same bytes again); mappings and
/// hints that decode encode to bytes that decode to the same thing; the line splitter gives
/// the same lines however the input is chunked. Errors must describe themselves.
func exercise(_ bytes: [UInt8]) {
    checkJSON(bytes)
    checkMappings(bytes)
    let whole = split(bytes, chunks: [bytes.count], maxLine: LineSplitter.defaultMaxLine)
    for case .text(let line) in whole { checkHint(line) }
    // The same stream in pieces the input chooses, and one byte at a time; a small line limit
    // too, so the too-long path is reached by short inputs.
    let sizes = bytes.prefix(8).map { Int($0 % 17) + 1 }
    let bytewise = [Int](repeating: 1, count: bytes.count)
    precondition(split(bytes, chunks: sizes, maxLine: LineSplitter.defaultMaxLine) == whole, "chunking changed the lines")
    precondition(split(bytes, chunks: bytewise, maxLine: LineSplitter.defaultMaxLine) == whole, "byte-by-byte feeding changed the lines")
    let small = split(bytes, chunks: [bytes.count], maxLine: 16)
    precondition(split(bytes, chunks: sizes, maxLine: 16) == small, "chunking changed the lines (limit 16)")
    precondition(split(bytes, chunks: bytewise, maxLine: 16) == small, "byte-by-byte feeding changed the lines (limit 16)")
    for case .text(let line) in small { precondition(line.count <= 16 && !line.contains(0x0A) && !line.isEmpty, "bad line") }
}

func checkJSON(_ bytes: [UInt8]) {
    let value: JSONValue
    do { value = try JSONReader.parse(bytes) } catch { _ = error.description; return }
    let written = JSONWriter.encode(value)
    guard let again = try? JSONReader.parse(written) else { preconditionFailure("written JSON does not parse: \(written)") }
    precondition(again == value, "JSON round trip changed the value")
    precondition(JSONWriter.encode(again) == written, "JSON writer is not canonical")
    _ = value.uint64
}

func checkMappings(_ bytes: [UInt8]) {
    let mappings: [RegionMapping]
    do { mappings = try RegionMapping.decodeArray(bytes) } catch { _ = error.description; return }
    let encoded = RegionMapping.encodeArray(mappings)
    guard let back = try? RegionMapping.decodeArray(encoded) else { preconditionFailure("encoded mappings do not decode") }
    precondition(back == mappings, "mappings round trip changed them")
}

func checkHint(_ line: [UInt8]) {
    let hint: PrefetchHint
    do { hint = try PrefetchHint.decode(line) } catch { _ = error.description; return }
    var splitter = LineSplitter()
    splitter.append(hint.encoded())
    guard case .text(let encoded)? = splitter.next(), splitter.next() == nil else { preconditionFailure("a hint's line is not one line") }
    precondition((try? PrefetchHint.decode(encoded)) == hint, "hint round trip changed it")
    precondition((try? PrefetchHint.decodeReply(Array(hint.encodedReply().dropLast()))) == hint, "reply round trip changed it")
}

/// The lines of `bytes` fed in chunks of the given sizes (cycled), then drained.
func split(_ bytes: [UInt8], chunks: [Int], maxLine: Int) -> [LineSplitter.Line] {
    var splitter = LineSplitter(maxLine: maxLine)
    var lines: [LineSplitter.Line] = []
    var at = 0, n = 0
    while at < bytes.count {
        let size = chunks.isEmpty ? bytes.count : max(1, chunks[n % chunks.count])
        splitter.append(bytes[at..<min(bytes.count, at + size)])
        while let line = splitter.next() { lines.append(line) }
        at += size
        n += 1
    }
    precondition(splitter.pendingBytes <= maxLine, "the splitter holds more than a line")
    return lines
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
    static func main() { replayFuzzInputs(tool: "PagerHandoffFuzz") { exercise($0) } }
}
#endif
