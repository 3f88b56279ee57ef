#if RDMA
import PagerKernel

/// The same reads over TCP on the same interface, in the same run: a request of 12 bytes
/// (offset u64, length u32, little-endian: both ends are this process) answered with the bytes,
/// one at a time. What the pager's TCP path cannot beat, next to what READ does.
func tcpBaseline(address: String, unit: Int, count: Int, source: CheckSource) throws -> String {
    let listener = try TCPListener(Endpoint(host: address, port: 0))
    let memory = UnsafeRawBufferPointer(source.memory)
    let server = try KernelThread(name: "check-tcp") { [source] in
        let memory = UnsafeRawBufferPointer(source.memory)
        guard let socket = try? listener.accept() else { return }
        var request = [UInt8](repeating: 0, count: 12)
        while (try? request.withUnsafeMutableBytes { try socket.readExactly(into: $0.baseAddress!, count: 12) }) == true {
            let offset = request.withUnsafeBytes { Int($0.loadUnaligned(as: UInt64.self)) }
            let length = request.withUnsafeBytes { Int($0.loadUnaligned(fromByteOffset: 8, as: UInt32.self)) }
            guard offset >= 0, length > 0, offset + length <= memory.count else { return }
            guard (try? socket.writeAll([UnsafeRawBufferPointer(rebasing: memory[offset..<offset + length])])) != nil else { return }
        }
    }
    defer { server.join() }
    let socket = try TCPSocket.connect(listener.endpoint, timeoutMilliseconds: 5000)
    defer { socket.shutdown() }
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: unit, alignment: 4096)
    defer { buffer.deallocate() }
    var samples: [UInt64] = []
    var random: UInt64 = 0x9E37_79B9
    let units = memory.count / unit
    let start = monotonicNanoseconds()
    for _ in 0..<count {
        random ^= random << 13
        random ^= random >> 7
        random ^= random << 17
        let offset = Int(random % UInt64(units)) * unit
        var request = [UInt8](repeating: 0, count: 12)
        request.withUnsafeMutableBytes {
            $0.storeBytes(of: UInt64(offset), as: UInt64.self)
            $0.storeBytes(of: UInt32(unit), toByteOffset: 8, as: UInt32.self)
        }
        let t0 = monotonicNanoseconds()
        try request.withUnsafeBytes { try socket.writeAll([$0]) }
        guard try socket.readExactly(into: buffer.baseAddress!, count: unit) else { throw CheckFailure("the TCP server hung up") }
        samples.append(monotonicNanoseconds() - t0)
        guard buffer.elementsEqual(UnsafeRawBufferPointer(rebasing: memory[offset..<offset + unit])) else {
            throw CheckFailure("TCP delivered wrong bytes at \(offset)")
        }
    }
    let seconds = Double(monotonicNanoseconds() - start) / 1e9
    return "\(unit >> 10) KiB over TCP \(percentiles(samples)), \(fixed(Double(count * unit) / seconds / 1e6)) MB/s, every byte verified"
}
#endif
