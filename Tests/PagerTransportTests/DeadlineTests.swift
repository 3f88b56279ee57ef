@testable import PagerTransport
import PagerKernel
import PagerWire
import Synchronization
import Testing

/// Writes `bytes` from `pair`'s raw side one byte every `everyMilliseconds`, on its own thread,
/// until they are all written, the write fails (the channel side closed) or ``stop()``.
final class Trickler: Sendable {
    private final class Progress: Sendable {
        let stopping = Atomic<Bool>(false)
        let written = Atomic<Int>(0)
    }

    private let progress = Progress()
    private let thread: KernelThread

    init(_ bytes: [UInt8], to pair: Pair, everyMilliseconds: Int) throws {
        let progress = progress
        thread = try KernelThread(name: "test-trickle") {
            for byte in bytes {
                // Pacing the peer is this test's subject, not a wait for an event.
                sleepMilliseconds(everyMilliseconds)
                if progress.stopping.load(ordering: .relaxed) { return }
                guard (try? pair.write([byte], pieces: [1])) != nil else { return }
                progress.written.add(1, ordering: .relaxed)
            }
        }
    }

    /// Bytes written so far.
    var count: Int { progress.written.load(ordering: .relaxed) }

    func stop() {
        progress.stopping.store(true, ordering: .relaxed)
        thread.join()
    }
}

@Suite("FrameChannel.receive(deadline:): one deadline for the whole frame")
struct DeadlineTests {
    /// Time allowed past a deadline for the error to surface: scheduling on a busy 2-core
    /// machine, not the channel's own slack (it gives up on the first wake after the deadline).
    static let slackNanoseconds: UInt64 = 1_000_000_000

    /// Runs a receive that must fail with the deadline error; returns how long it took.
    static func expectDeadline(_ channel: FrameChannel, after allowed: UInt64) -> UInt64 {
        let started = monotonicNanoseconds()
        do {
            let frame = try channel.receive(deadline: .after(nanoseconds: allowed), waitingFor: "HELLO")
            Issue.record("a frame arrived: \(Received(frame))")
        } catch {
            guard case .deadline(let peer, let what, let deadline) = error else {
                Issue.record("expected the deadline error, got \(error)")
                return 0
            }
            #expect(peer == channel.peer && what == "HELLO" && deadline.allowedNanoseconds == allowed)
            #expect("\(error)" == "\(channel.peer) sent no complete HELLO within \(allowed / 1_000_000) ms", "\(error)")
        }
        let took = monotonicNanoseconds() - started
        #expect(took >= allowed, "gave up \(allowed - took) ns early")
        #expect(took < allowed + slackNanoseconds, "gave up \(took - allowed) ns late")
        return took
    }

    @Test("a peer that sends nothing: the deadline error, at the deadline")
    func silentPeer() throws {
        let pair = try Pair()
        _ = DeadlineTests.expectDeadline(pair.channel, after: 300_000_000)
    }

    @Test("a peer that trickles HELLO one byte per 100 ms: the deadline error at the deadline, not per byte")
    func tricklingPeer() throws {
        let pair = try Pair()
        let hello = Message.hello(Hello(features: [], clientName: "slowloris")).encoded()
        let trickler = try Trickler(hello, to: pair, everyMilliseconds: 100)
        defer { trickler.stop() }
        // 800 ms: about 8 of HELLO's bytes, a header and then some, each within a per-read
        // timeout of 100 ms, so only a deadline for the whole frame ends this.
        _ = DeadlineTests.expectDeadline(pair.channel, after: 800_000_000)
        #expect(trickler.count > 1 && trickler.count < hello.count, "\(trickler.count) of \(hello.count) bytes")
    }

    @Test("a whole frame under a deadline arrives as from receive(), and a receive() after it has none")
    func frameInTime() throws {
        let pair = try Pair()
        let hello = Message.hello(Hello(features: [.resume], clientName: "in time"))
        try pair.write(hello.encoded() + Message.ping(token: 1, timestamp: 2).encoded(), pieces: [3, 50, 7])
        let got = try pair.channel.receive(deadline: .after(nanoseconds: 5_000_000_000), waitingFor: "HELLO")
        #expect(Received(got) == .message(hello))
        #expect(Received(try pair.channel.receive()) == .message(.ping(token: 1, timestamp: 2)))
    }

    @Test("PAGE_DATA under a deadline, in pieces: whole and correct; the page buffer is allocated then, 2 MiB-aligned")
    func pageDataInTime() throws {
        let pair = try Pair()
        #expect(pair.channel.pageBuffer == nil, "no page buffer before the first PAGE_DATA")
        let data = pattern(9, pages: 256) // 1 MiB: the long-read path, which uses MSG_WAITALL without a deadline
        let message = Message.pageData(PageData(requestID: 3, region: 1, offset: 0x200000, length: UInt64(data.count),
                                                flags: [], encoding: .raw, checksums: checksums(data), data: data))
        let writer = try KernelThread(name: "test-writer") { try? pair.write(message.encoded(), pieces: [4096, 100_000, 1]) }
        defer { writer.join() }
        let got = try pair.channel.receive(deadline: .after(nanoseconds: 10_000_000_000), waitingFor: "PAGE_DATA")
        #expect(Received(got) == Received(sent: message))
        guard case .pageData(_, let bytes) = got else { return }
        #expect(Int(bitPattern: bytes.baseAddress) % hugePageSize == 0, "page bytes at a 2 MiB boundary")
        #expect(pair.channel.pageBuffer != nil)
    }

    @Test("a zero-encoded PAGE_DATA needs no page buffer")
    func zeroPageData() throws {
        let pair = try Pair()
        let message = Message.pageData(PageData(requestID: 0, region: 1, offset: 0, length: 1 << 30, flags: .push, encoding: .zero, data: []))
        try pair.write(message.encoded(), pieces: [1 << 20])
        #expect(Received(try pair.channel.receive()) == Received(sent: message))
        #expect(pair.channel.pageBuffer == nil)
    }

    @Test("Deadline: saturates instead of wrapping, and reads its allowance in ms or s")
    func deadlineValue() {
        #expect(Deadline.after(nanoseconds: .max).nanoseconds == .max)
        #expect(Deadline(nanoseconds: 0, allowedNanoseconds: 10_000_000_000).allowedDescription == "10 s")
        #expect(Deadline(nanoseconds: 0, allowedNanoseconds: 1_500_000_000).allowedDescription == "1.5 s")
        #expect(Deadline(nanoseconds: 0, allowedNanoseconds: 250_000_000).allowedDescription == "250 ms")
        #expect(Deadline(nanoseconds: 0, allowedNanoseconds: 1).remainingNanoseconds == 0)
    }
}
