import PagerHarness
import PagerKernel

/// Admission control under a connection flood: how long a real destination takes to complete
/// its handshake with a `pagerd source` on loopback while `connections` idle connections from
/// `hosts` other loopback addresses are held open, against the same handshake with no flood,
/// same source, same run. Two floods: one opened once and held (the source evicts what is
/// over its caps and is left in peace), and one that re-opens each connection as soon as the
/// source evicts it, so that it never lets up.
///
/// The flood spreads over more hosts than the per-host cap covers (40 hosts of 8 > 64), so
/// the global cap evicts too and the destination's own connection is at risk: a handshake
/// evicted before it completes is retried, as a destination would, and its time includes the
/// retries. The destination's handshake is passed in (pager-bench's `DestinationClient`),
/// because this kit links no service.
public struct FloodBenchmark {
    public var connections = 300
    public var hosts = 40
    public var samples = 50
    let binaries: String

    public init(binaries: String) { self.binaries = binaries }

    public struct Result: Sendable {
        /// Median time of a whole destination handshake (demand and push connections), ns:
        /// no flood, a held flood, a re-opening flood.
        public var quietMedian: UInt64
        public var heldMedian: UInt64
        public var reopeningMedian: UInt64
        /// Handshakes under the floods that failed (evicted) and were tried again.
        public var retries: Int
        /// Flood connections re-opened after the source evicted them.
        public var reopened: Int
        /// The source's handshake counters, as it printed them.
        public var sourceHandshakes: String

        public var heldRatio: Double { Double(heldMedian) / Double(max(1, quietMedian)) }
        public var reopeningRatio: Double { Double(reopeningMedian) / Double(max(1, quietMedian)) }
    }

    public func run(handshake: (Endpoint) throws -> Void) throws -> Result {
        try raiseOpenFileLimit()
        let scratch = Scratch()
        let ram = scratch.file("flood.ram")
        // Small: each handshake starts a session whose push streams the whole region.
        try sh(binaries + "/pager-workload", "fill", "--file", ram, "--size-mib", "1", "--seed", "5")
        let source = try ChildProcess(binaries + "/pagerd", ["source", "--listen", "127.0.0.1:0", "--region", ram, "--key-file", scratch.keyFile],
                                      outputPath: scratch.file("source.log"))
        defer {
            source.signal(.terminate)
            _ = source.wait(timeoutMilliseconds: 10_000)
        }
        try waitFor(source, toPrint: "serving 1 region")
        guard let endpoint = FloodBenchmark.listening(source.output) else { throw HarnessError("no endpoint in: \(source.output)") }

        var retries = 0
        func measure() throws -> UInt64 {
            var times: [UInt64] = []
            for _ in 0..<samples {
                let t = try timed(handshake, endpoint)
                times.append(t.nanoseconds)
                retries += t.retries
            }
            return times.sorted()[times.count / 2]
        }
        let quiet = try measure()
        let held = try Flood(to: endpoint, connections: connections, hosts: hosts, reopen: false)
        let heldMedian = try measure()
        _ = held.stop()
        let reopening = try Flood(to: endpoint, connections: connections, hosts: hosts, reopen: true)
        let reopeningMedian = try measure()
        let reopened = reopening.stop()
        source.signal(.terminate)
        _ = source.wait(timeoutMilliseconds: 10_000)
        let summary = source.output.split(separator: "\n").last { $0.contains("handshakes:") }
        return Result(quietMedian: quiet, heldMedian: heldMedian, reopeningMedian: reopeningMedian, retries: retries, reopened: reopened,
                      sourceHandshakes: summary.map { String($0[$0.firstRange(of: "handshakes:")!.lowerBound...]) } ?? "(not printed)")
    }

    /// One handshake, tried again (at most 20 times) when the flood evicted it.
    private func timed(_ handshake: (Endpoint) throws -> Void, _ endpoint: Endpoint) throws -> (nanoseconds: UInt64, retries: Int) {
        let started = monotonicNanoseconds()
        for attempt in 0..<20 {
            do {
                try handshake(endpoint)
                return (monotonicNanoseconds() - started, attempt)
            } catch where attempt < 19 {
                continue
            }
        }
        throw HarnessError("unreachable: the last attempt rethrows")
    }

    /// The port `pagerd source --listen 127.0.0.1:0` chose, from its "serving ... on" line.
    static func listening(_ output: String) -> Endpoint? {
        guard let on = output.firstRange(of: "serving 1 region(s) on ") else { return nil }
        let text = output[on.upperBound...].prefix { $0 != " " }.dropLast() // "127.0.0.1:PORT:"
        return Endpoint(String(text))
    }
}

/// The flood: `connections` idle connections, from 127.0.0.2 onwards, held on one thread until
/// ``stop()``; with `reopen`, each re-opened as soon as the source closes it.
private final class Flood: Sendable {
    private let stopping = WaitableState(false)
    private let reopened = WaitableState(0)
    private let thread: KernelThread

    init(to endpoint: Endpoint, connections: Int, hosts: Int, reopen: Bool) throws {
        let sources = (0..<connections).map { "127.0.0.\(2 + $0 % hosts)" }
        let opened = try sources.map { try TCPSocket.connect(endpoint, from: $0) }
        let stopping = stopping, reopened = reopened
        thread = try KernelThread(name: "bench-flood") {
            var sockets = opened // closed when this thread ends
            guard reopen else {
                _ = stopping.wait(until: { $0 })
                return
            }
            // Bounded: the benchmark stops it, and it gives up by itself after 5 minutes.
            let giveUp = monotonicNanoseconds() + 300_000_000_000
            while !stopping.withLock({ $0 }) && monotonicNanoseconds() < giveUp {
                // An eviction shows as readable (end of stream): open that one again at once.
                guard let readable = try? TCPSocket.readable(sockets, timeoutMilliseconds: 50) else { return }
                for (i, closed) in readable.enumerated() where closed {
                    guard let again = try? TCPSocket.connect(endpoint, from: sources[i]) else { continue }
                    sockets[i] = again
                    reopened.withLock { $0 += 1 }
                }
            }
        }
    }

    /// Stops the flood (its sockets close with its thread) and returns how many it re-opened.
    func stop() -> Int {
        stopping.change { $0 = true }
        thread.join()
        return reopened.withLock { $0 }
    }
}
