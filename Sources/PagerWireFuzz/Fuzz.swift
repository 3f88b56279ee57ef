// libFuzzer target for the wire decoder.
//
//   swift build -c debug --sanitize fuzzer --sanitize address --product PagerWireFuzz -Xswiftc -DFUZZING \
//       --scratch-path .build-fuzz
//   .build-fuzz/debug/PagerWireFuzz -max_total_time=60 Protocols/vectors/corpus
//
// Without -DFUZZING the same code builds as a replay tool (`PagerWireFuzz FILE...`), so a
// plain `swift build` links and a crash input can be replayed under a debugger.

import PagerWire

/// Feeds `bytes` to the frame decoder in two ways (all at once, and split at a point the
/// input chooses) and checks the invariants: both ways agree, nothing decoded is dropped, and
/// every decoded message re-encodes to a frame that decodes to the same message.
func exercise(_ bytes: UnsafeRawBufferPointer) {
    var whole = FrameDecoder(maxPayload: 1 << 20)
    whole.append(bytes)
    var first: [Message] = []
    var firstError: WireError?
    do {
        while let m = try whole.next() { first.append(m) }
    } catch {
        firstError = error
    }

    let split = bytes.isEmpty ? 0 : Int(bytes[0]) % (bytes.count + 1)
    var pieces = FrameDecoder(maxPayload: 1 << 20)
    var second: [Message] = []
    var secondError: WireError?
    do {
        pieces.append(UnsafeRawBufferPointer(rebasing: bytes[0..<split]))
        while let m = try pieces.next() { second.append(m) }
        pieces.append(UnsafeRawBufferPointer(rebasing: bytes[split...]))
        while let m = try pieces.next() { second.append(m) }
    } catch {
        secondError = error
    }
    precondition(first == second && firstError == secondError, "chunking changed the decoding")

    for m in first {
        let again = m.encoded()
        var check = FrameDecoder()
        check.append(again)
        let back = try? check.next()
        precondition(back == m, "re-encoding \(m) did not decode to the same message")
        _ = m.description
    }
    if let firstError { _ = firstError.description }
}

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    exercise(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#else
import PagerKernel

@main
struct Replay {
    static func main() {
        let paths = CommandLine.arguments.dropFirst()
        if paths.isEmpty {
            print("usage: PagerWireFuzz FILE... (replays inputs; build with -DFUZZING and --sanitize fuzzer to fuzz)")
            exitProcess(2)
        }
        for path in paths {
            guard let bytes = try? readFileBytes(path) else { print("cannot open \(path)"); exitProcess(1) }
            bytes.withUnsafeBytes { exercise($0) }
            print("\(path): ok (\(bytes.count) bytes)")
        }
    }
}
#endif
