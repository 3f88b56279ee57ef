import Glibc
import PagerKernel
@testable import PagerDestination
import Testing

@Suite("pager-bench", .serialized, .enabled(if: isRoot, "needs root for network namespaces and userfaultfd"),
       .enabled(if: access(Binaries.directory + "/pager-bench", X_OK) == 0, "pager-bench not built in release: run swift build -c release"))
struct BenchmarkTests {
    @Test("a short postcopy run prints its documented JSON keys with sane values")
    func postcopyJSON() throws {
        let out = try sh(Binaries.directory + "/pager-bench", "postcopy", "--size-mib", "32", "--samples", "200", "--json")
        let line = try #require(out.split(separator: "\n").last(where: { $0.hasPrefix("{") }))
        let json = try JSONReader.parse(Array(line.utf8))
        func number(_ path: String...) -> Double? {
            var v: JSONValue? = json
            for key in path { v = v?[key] }
            if case .number(let text)? = v { return Double(text) }
            return nil
        }
        #expect(json["scenario"] == .string("postcopy"))
        #expect(number("region_bytes") == Double(32 << 20))
        #expect(number("pager", "full_transfer_bytes") == number("region_bytes"), "every byte of the region arrived and was verified")
        for path in [["baselines", "tcp_round_trip_ns"], ["baselines", "local_fault_ns"], ["pager", "idle_fault_ns"], ["pager", "pushing_fault_ns"]] {
            let p50 = try #require(number(path[0], path[1], "p50")), p90 = try #require(number(path[0], path[1], "p90"))
            let p99 = try #require(number(path[0], path[1], "p99")), max = try #require(number(path[0], path[1], "max"))
            #expect(p50 > 0 && p50 <= p90 && p90 <= p99 && p99 <= max, "\(path): \(p50) \(p90) \(p99) \(max)")
        }
        #expect((number("pager", "idle_fault_ns", "count") ?? 0) > 0, "the idle run measured faults")
        for key in ["tcp_stream_seconds", "local_install_seconds"] { #expect((number("baselines", key) ?? 0) > 0) }
        #expect((number("pager", "full_transfer_seconds") ?? 0) > 0)
        for key in ["idle_p50_vs_round_trip_plus_local_fault", "pushing_p99_vs_idle_p50", "full_transfer_vs_local_install", "full_transfer_vs_tcp_stream"] {
            #expect((number("ratios", key) ?? 0) > 0, "\(key)")
        }
    }
}
