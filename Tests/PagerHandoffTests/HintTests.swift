import PagerHandoff
import Testing

@Suite("Prefetch hints and the line splitter")
struct HintTests {
    @Test("a hint decodes, encodes back to the same line, and its reply is the prefetched line")
    func hint() throws {
        let line = Array(#"{"prefetch":{"base_host_virt_addr":140000000000000,"size":1048576}}"#.utf8)
        let hint = try PrefetchHint.decode(line)
        #expect(hint == PrefetchHint(address: 140_000_000_000_000, size: 1 << 20))
        #expect(hint.encoded() == line + [0x0A])
        #expect(hint.encodedReply() == Array(#"{"prefetched":{"base_host_virt_addr":140000000000000,"size":1048576}}"#.utf8) + [0x0A])
        #expect(try PrefetchHint.decodeReply(Array(hint.encodedReply().dropLast())) == hint)
        // Key order, whitespace, unknown members and an unaligned range are fine.
        #expect(try PrefetchHint.decode(Array(#" { "v":1, "prefetch" : { "size":10, "base_host_virt_addr":4097, "why":"boot" } } "#.utf8))
            == PrefetchHint(address: 4097, size: 10))
    }

    @Test("hint refusals")
    func refused() {
        func why(_ s: String) -> HandoffFormatError? {
            do { _ = try PrefetchHint.decode(Array(s.utf8)); return nil } catch { return error }
        }
        guard case .notJSON? = why("{\"prefetch\":") else { Issue.record("truncated hint accepted"); return }
        #expect(why("[1]") == .notAnObject(.hint, found: "an array"))
        #expect(why(#"{"prefetched":{"base_host_virt_addr":0,"size":1}}"#) == .missingField(.hint, field: "prefetch"))
        #expect(why(#"{"prefetch":7}"#) == .notAnObject(.hint, found: "a number"))
        #expect(why(#"{"prefetch":{"size":1}}"#) == .missingField(.hint, field: "base_host_virt_addr"))
        #expect(why(#"{"prefetch":{"base_host_virt_addr":0,"size":-1}}"#)
            == .notAnUnsignedInteger(.hint, field: "size", text: "-1", problem: .negative))
        #expect(why(#"{"prefetch":{"base_host_virt_addr":0,"size":0}}"#) == .zeroSize(.hint))
        #expect(why(#"{"prefetch":{"base_host_virt_addr":18446744073709551615,"size":2}}"#)
            == .rangeOverflows(.hint, field: "base_host_virt_addr", start: .max, size: 2))
    }

    /// The lines of `stream` fed in pieces of `size` bytes.
    func lines(_ stream: [UInt8], pieces size: Int, maxLine: Int = LineSplitter.defaultMaxLine) -> [LineSplitter.Line] {
        var s = LineSplitter(maxLine: maxLine)
        var out: [LineSplitter.Line] = []
        for start in stride(from: 0, to: stream.count, by: size) {
            s.append(stream[start..<min(stream.count, start + size)])
            while let l = s.next() { out.append(l) }
        }
        return out
    }

    @Test("hints split across reads, at every piece size, give the same lines")
    func split() throws {
        let hints = (1...5).map { PrefetchHint(address: UInt64($0) << 30, size: UInt64($0) * 4096) }
        let stream = hints.flatMap { $0.encoded() } + Array("\n\n".utf8)
        let whole = lines(stream, pieces: stream.count)
        #expect(whole == hints.map { .text(Array($0.encoded().dropLast())) })
        for size in 1...stream.count { #expect(lines(stream, pieces: size) == whole, "pieces of \(size) bytes") }
        // Nothing before the newline arrives.
        var s = LineSplitter()
        s.append(hints[0].encoded().dropLast())
        #expect(s.next() == nil)
        s.append([0x0A])
        guard case .text(let l)? = s.next() else { Issue.record("no line after the newline"); return }
        #expect(try PrefetchHint.decode(l) == hints[0])
    }

    @Test("a line over the limit is reported once and its tail is not taken for a new line")
    func tooLong() {
        let good = PrefetchHint(address: 4096, size: 4096).encoded()
        let stream = good + [UInt8](repeating: UInt8(ascii: "x"), count: 100) + [0x0A] + good
        let expected: [LineSplitter.Line] = [.text(Array(good.dropLast())), .tooLong, .text(Array(good.dropLast()))]
        // FaultResolver's own loop (to be replaced by this splitter) empties its 64 KiB buffer
        // when it overflows, so the rest of the long line is then parsed as a line of its own.
        for size in 1...stream.count { #expect(lines(stream, pieces: size, maxLine: 64) == expected, "pieces of \(size) bytes") }
        let big = [UInt8](repeating: UInt8(ascii: " "), count: (64 << 10) + 1) + [0x0A] + good
        #expect(lines(big, pieces: 4096) == [.tooLong, .text(Array(good.dropLast()))])
        let atLimit = [UInt8](repeating: UInt8(ascii: " "), count: 64 << 10) + [0x0A]
        #expect(lines(atLimit, pieces: 1000) == [.text([UInt8](repeating: UInt8(ascii: " "), count: 64 << 10))])
    }
}
