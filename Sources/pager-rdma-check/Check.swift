#if RDMA
import PagerCrypto
import PagerKernel
import PagerRDMA

/// `pager-rdma-check selftest --device NAME --address IPV4`: the RDMA transport's parts on a
/// real device (soft-RoCE in `Deploy/rdma-test.sh`'s guest). One process plays both ends: a
/// source thread that admits queue pairs and registers a patterned region for remote READ, and
/// the destination side (this thread) that connects, READs into staging pools and checks every
/// byte. Prints `ok NAME ...` or `FAIL NAME: why` per check, then
/// `rdma selftest: N passed, M failed`.
func runCheck(_ arguments: [String]) -> Int32 {
    guard arguments.first == "selftest", let device = value(arguments, "--device"), let address = value(arguments, "--address") else {
        writeStandardError("usage: pager-rdma-check selftest --device NAME --address IPV4\n")
        return 64
    }
    var results = CheckResults()
    results.check("device") {
        let devices = try RDMADevices.list()
        guard devices.contains(device) else { throw CheckFailure("\(device) not among the devices: \(devices.joined(separator: ", "))") }
        return "\(device) among \(devices.joined(separator: ", "))"
    }
    do {
        let source = try CheckSource(address: address)
        defer { source.stop() }
        runChecks(source: source, address: address, results: &results)
    } catch {
        results.fail("source", "\(error)")
    }
    print("rdma selftest: \(results.passed) passed, \(results.failed) failed")
    return results.failed == 0 && results.passed > 0 ? 0 : 1
}

func runChecks(source: CheckSource, address: String, results: inout CheckResults) {
    let session: UInt64 = 0x5e55_1011
    let key = randomBytes(32)
    source.open(session: session, key: key)
    results.check("refuse-wrong-mac") {
        try expectRefused(address, source.port, AdmissionRequest(channel: .demand, session: session, key: randomBytes(32)), "not from an authenticated")
    }
    results.check("refuse-unknown-session") {
        try expectRefused(address, source.port, AdmissionRequest(channel: .demand, session: session + 1, key: key), "not from an authenticated")
    }
    let destination: CheckDestination
    do {
        destination = try CheckDestination(address: address, port: source.port, session: session, key: key, channel: .demand, source: source)
        results.pass("connect", "demand queue pair admitted, \(CheckSource.regionBytes >> 20) MiB registered for remote READ")
    } catch {
        results.fail("connect", "\(error)")
        return
    }
    results.check("refuse-second-demand-queue-pair") {
        try expectRefused(address, source.port, AdmissionRequest(channel: .demand, session: session, key: key), "already has")
    }
    results.check("read-4k") { try destination.latency(pages: 1, count: 500) }
    results.check("read-chain-16x4k") { try destination.chained(count: 100) }
    results.check("read-2m") { try destination.throughput(unit: 2 << 20, inFlight: 1, bytes: 32 << 20) }
    results.check("push-512k-x4") { try destination.throughput(unit: 512 << 10, inFlight: 4, bytes: 32 << 20) }
    results.check("tcp-4k") { try tcpBaseline(address: address, unit: 4096, count: 500, source: source) }
    results.check("tcp-2m") { try tcpBaseline(address: address, unit: 2 << 20, count: 16, source: source) }
    results.check("torn-down-mid-flight") { try destination.tornDown { source.disconnectAll() } }
    results.check("reconnect-after-tear-down") {
        let again = try CheckDestination(address: address, port: source.port, session: session, key: key, channel: .demand, source: source)
        return try again.latency(pages: 1, count: 50)
    }
}

/// A connection attempt that the source must refuse, with `reason` in its answer.
func expectRefused(_ address: String, _ port: UInt16, _ request: AdmissionRequest, _ reason: String) throws -> String {
    do {
        _ = try RDMAConnection.connect(to: address, port: port, privateData: request.bytes, until: .after(nanoseconds: 5_000_000_000))
    } catch {
        guard error.errno == .connectionRefused, error.detail.contains(reason) else { throw CheckFailure("refused differently: \(error)") }
        return "refused: \(error.detail)"
    }
    throw CheckFailure("the queue pair was accepted")
}

struct CheckFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

struct CheckResults {
    var passed = 0
    var failed = 0

    mutating func pass(_ name: String, _ detail: String) {
        passed += 1
        print("ok \(name): \(detail)")
        fflushStandardOutput()
    }

    mutating func fail(_ name: String, _ why: String) {
        failed += 1
        print("FAIL \(name): \(why)")
        fflushStandardOutput()
    }

    mutating func check(_ name: String, _ body: () throws -> String) {
        do { pass(name, try body()) } catch { fail(name, "\(error)") }
    }
}

func value(_ arguments: [String], _ option: String) -> String? {
    guard let i = arguments.firstIndex(of: option), i + 1 < arguments.count else { return nil }
    return arguments[i + 1]
}

/// Median and 99th percentile of `samples` (nanoseconds), in microseconds.
func percentiles(_ samples: [UInt64]) -> String {
    let sorted = samples.sorted()
    func at(_ q: Double) -> String { fixed(Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))]) / 1000) }
    return "p50 \(at(0.5)) us, p99 \(at(0.99)) us over \(sorted.count)"
}

func fixed(_ value: Double) -> String {
    let scaled = (value * 10).rounded()
    return "\(Int(scaled) / 10).\(abs(Int(scaled) % 10))"
}
#endif
