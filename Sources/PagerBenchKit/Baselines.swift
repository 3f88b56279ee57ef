import PagerHarness
import PagerKernel

/// Raw TCP baselines on the same path the pager uses: a request/response round trip the
/// shape of a page fetch (24-byte request, 4 KiB reply), and a bulk stream.
public enum RawTCP {
    /// Serves clients until killed: each 24-byte request gets `replyBytes` back; a request whose
    /// first byte is 0xFF instead asks for a stream of N bytes (N in bytes 8..<16).
    public static func serve(_ endpoint: Endpoint, replyBytes: Int = 4096) throws {
        let listener = try TCPListener(endpoint)
        print("raw-server listening on \(listener.endpoint)")
        fflushStandardOutput() // flush all streams: the readiness line must reach a log file now, not at exit
        let replyBuffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        replyBuffer.initializeMemory(as: UInt8.self, repeating: 0x5A, count: 1 << 20)
        let replyAddress = UInt(bitPattern: replyBuffer) // shared read-only by the connection threads
        while true {
            let socket = try listener.accept()
            socket.setBufferSizes(4 << 20)
            _ = try KernelThread(name: "raw-conn") {
                let reply = UnsafeRawPointer(bitPattern: replyAddress)!
                var request = [UInt8](repeating: 0, count: 24)
                while (try? request.withUnsafeMutableBytes { try socket.readExactly(into: $0.baseAddress!, count: 24) }) == true {
                    if request[0] == 0xFF {
                        var left = request.withUnsafeBytes { Int(UInt64(bigEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self))) }
                        while left > 0 {
                            let n = min(left, 1 << 20)
                            guard (try? socket.writeAll([UnsafeRawBufferPointer(start: reply, count: n)])) != nil else { return }
                            left -= n
                        }
                    } else if (try? socket.writeAll([UnsafeRawBufferPointer(start: reply, count: replyBytes)])) == nil {
                        return
                    }
                }
            }
        }
    }

    /// `count` request/response round trips; returns their latencies in ns.
    public static func roundTrips(_ endpoint: Endpoint, count: Int, replyBytes: Int = 4096) throws -> [UInt64] {
        let socket = try TCPSocket.connect(endpoint)
        let request = [UInt8](repeating: 1, count: 24)
        let reply = UnsafeMutableRawPointer.allocate(byteCount: replyBytes, alignment: 4096)
        defer { reply.deallocate() }
        var samples: [UInt64] = []
        samples.reserveCapacity(count)
        for _ in 0..<count {
            let t0 = monotonicNanoseconds()
            try request.withUnsafeBytes { try socket.writeAll([$0]) }
            guard try socket.readExactly(into: reply, count: replyBytes) else { throw HarnessError("raw server closed") }
            samples.append(monotonicNanoseconds() - t0)
        }
        return samples
    }

    /// Streams `bytes` from the server; returns the seconds it took.
    public static func stream(_ endpoint: Endpoint, bytes: Int) throws -> Double {
        let socket = try TCPSocket.connect(endpoint)
        socket.setBufferSizes(4 << 20)
        var request = [UInt8](repeating: 0, count: 24)
        request[0] = 0xFF
        withUnsafeBytes(of: UInt64(bytes).bigEndian) { for i in 0..<8 { request[8 + i] = $0[i] } }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        let t0 = monotonicNanoseconds()
        try request.withUnsafeBytes { try socket.writeAll([$0]) }
        var left = bytes
        while left > 0 {
            let n = min(left, 1 << 20)
            guard try socket.readExactly(into: buffer, count: n) else { throw HarnessError("raw server closed") }
            left -= n
        }
        return Double(monotonicNanoseconds() - t0) / 1e9
    }
}

/// Installing memory locally with batched UFFDIO_COPY: the floor for a full transfer.
public enum LocalInstallBenchmark {
    /// Seconds to install `bytes` of anonymous memory in `batch`-byte UFFDIO_COPY calls.
    public static func run(bytes: Int, batch: Int = 64 << 10) throws -> Double {
        let missing = try MissingRegion(bytes: bytes)
        let source = UnsafeMutableRawPointer.allocate(byteCount: batch, alignment: basePageSize)
        defer { source.deallocate() }
        source.initializeMemory(as: UInt8.self, repeating: 0x5A, count: batch)
        let base = UInt64(UInt(bitPattern: missing.memory.base))
        let t0 = monotonicNanoseconds()
        var at = 0
        while at < bytes {
            _ = try missing.uffd.copy(to: base + UInt64(at), from: source, length: UInt64(batch), dontWake: true)
            at += batch
        }
        return Double(monotonicNanoseconds() - t0) / 1e9
    }
}
