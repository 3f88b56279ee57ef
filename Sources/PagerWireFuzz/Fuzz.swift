// libFuzzer target for the wire decoder.
//
//   swift build -c debug --sanitize fuzzer --sanitize address --product PagerWireFuzz -Xswiftc -DFUZZING \
//       -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp \
//       --scratch-path .build-fuzz
//   .build-fuzz/debug/PagerWireFuzz -max_total_time=60 Protocols/vectors/corpus
//
// Without -DFUZZING the same code builds as a replay tool (`PagerWireFuzz FILE...`), so a
// plain `swift build` links and a crash input can be replayed under a debugger.

import PagerCore
import PagerTrust
import PagerWire

/// Feeds `bytes` to the frame decoder in two ways (all at once, and split at a point the
/// input chooses), and to the parser the way the transport drives it, and checks the
/// invariants: all ways agree, nothing decoded is dropped, and every decoded message
/// re-encodes to a frame that decodes to the same message.
func exercise(_ bytes: UnsafeRawBufferPointer) {
    var whole = FrameDecoder(maxPayload: 1 << 20)
    whole.append(bytes)
    var first: [Message] = []
    var firstError: WireError?
    var frameStart = 0
    do {
        while let m = try whole.next() {
            // Lossless: the authentication transcript hashes a received frame as it
            // re-encodes, so that must be the bytes that came in.
            let end = bytes.count - whole.bufferedBytes
            precondition(m.encoded().elementsEqual(bytes[frameStart..<end]), "\(m) does not re-encode to the bytes it came from")
            frameStart = end
            first.append(m)
        }
    } catch {
        firstError = error
    }
    authenticate(first)

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

    let streamed = streamLikeTheChannel(bytes)
    if let firstError {
        precondition(streamed.messages == first && streamed.error == firstError, "the channel's way disagrees with the decoder")
    } else {
        // The decoder waits for a whole frame; the stream may refuse an incomplete one from
        // its first parts. Only the frame the decoder still holds may differ.
        precondition(streamed.messages == first, "the channel's way decoded different messages")
        if streamed.error != nil { precondition(streamed.failedFrameStart == bytes.count - whole.bufferedBytes, "the stream refused a frame the decoder took") }
    }

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

/// Drives ``FrameParser`` the way FrameChannel does: the input arrives in chunks whose sizes
/// the input chooses (each `recv` returns one), parser parts are taken in place when whole in
/// the current chunk or assembled in a scratch buffer when they span chunks, and raw page
/// bytes go to a separate page buffer that the message's data is read back from.
func streamLikeTheChannel(_ bytes: UnsafeRawBufferPointer) -> (messages: [Message], error: WireError?, failedFrameStart: Int) {
    var sizes = SplitMix64(state: bytes.prefix(8).reduce(UInt64(bytes.count)) { $0 << 8 | UInt64($1) })
    var parser = FrameParser(maxPayload: 1 << 20)
    let pageBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    // A part spanning chunks is assembled here (parts are at most the 1 MiB payload limit).
    let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
    defer { pageBuffer.deallocate(); scratch.deallocate() }
    var chunkEnd = 0, at = 0, frameStart = 0
    var out: [Message] = []
    /// The next `n` bytes: in place if the current chunk holds them, else copied across chunks.
    func take(_ n: Int) -> UnsafeRawBufferPointer? {
        if at + n <= chunkEnd { defer { at += n }; return UnsafeRawBufferPointer(rebasing: bytes[at..<at + n]) }
        while chunkEnd < at + n && chunkEnd < bytes.count { chunkEnd = min(bytes.count, chunkEnd + 1 + Int(sizes.next() % 9000)) }
        guard at + n <= bytes.count else { return nil }
        defer { at += n }
        let part = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<n])
        part.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[at..<at + n]))
        return UnsafeRawBufferPointer(part)
    }
    do {
        while true {
            let event: FrameParser.Event?
            switch parser.need {
            case .bytes(let n):
                guard let part = take(n) else { return (out, nil, frameStart) }
                event = try parser.parse(part)
            case .pageBytes(let n):
                guard let part = take(n) else { return (out, nil, frameStart) }
                pageBuffer.copyMemory(from: part)
                event = parser.pageBytesReceived()
            }
            switch event {
            case nil: continue
            case .message(let m)?: out.append(m)
            case .pageData(let h, let sums)?:
                let data = h.encoding == .zero ? [] : Array(pageBuffer.prefix(h.dataPageCount * 4096))
                out.append(.pageData(PageData(header: h, checksums: sums, data: data)))
            }
            frameStart = at
        }
    } catch {
        return (out, error, frameStart)
    }
}


/// The server's and the client's authenticators fed what the input decoded to: a HELLO
/// with any identity and features, then any AUTH_RESPONSE (nonce, share, MAC) or any
/// AUTH_CHALLENGE. They must refuse or accept, never trap; and a response the input made up
/// never verifies.
func authenticate(_ messages: [Message]) {
    guard case .hello(let hello)? = messages.first else { return }
    var server = try? ServerAuthenticator(ring: fuzzRing, hello: hello)
    _ = server?.challenge()
    var client = try? ClientAuthenticator(key: fuzzRing.primary)
    _ = client?.hello(hello)
    for m in messages.dropFirst() {
        switch m {
        case .authResponse(let nonce, let share, let mac):
            let verified = (try? server?.verify(clientNonce: nonce, share: share, mac: mac, resumeToken: Array(repeating: 0, count: 16),
                                                 resuming: hello.resumeSession != 0)) != nil
            precondition(server == nil || !verified, "a made-up AUTH_RESPONSE verified")
        case .authChallenge(let nonce, let share):
            _ = try? client?.respond(challengeNonce: nonce, share: share, resumeToken: Array(repeating: 0, count: 16))
        case .authConfirm(let mac):
            precondition((try? client?.confirm(mac: mac)) == nil, "a made-up AUTH_CONFIRM verified")
        default:
            client?.received(m)
        }
    }
}

/// The key the fuzzed handshakes run against (fresh nonces every run: no input can know them).
let fuzzRing: KeyRing = {
    guard let key = try? PresharedKey(identity: "pager-1", secret: Array(repeating: 0x5A, count: 32)),
          let ring = try? KeyRing(keys: [key]) else { preconditionFailure("the fuzz key ring is invalid") }
    return ring
}()

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
    static func main() { replayFuzzInputs(tool: "PagerWireFuzz") { bytes in bytes.withUnsafeBytes { exercise($0) } } }
}
#endif
