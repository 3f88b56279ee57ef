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

    @Test("a short `pager-bench run` of every scenario prints its documented JSON keys with sane values, and an SVG")
    func runJSON() throws {
        let plot = "/tmp/pager-bench-test-\(getpid()).svg"
        defer { unlink(plot) }
        let out = try sh(Binaries.directory + "/pager-bench", "run", "--size-mib", "64", "--samples", "200", "--huge-samples", "20",
                         "--protection-rounds", "1", "--hole-rounds", "1", "--json", "--plot", plot)
        let line = try #require(out.split(separator: "\n").last(where: { $0.hasPrefix("{") }))
        let json = try JSONReader.parse(Array(line.utf8))
        func number(_ v: JSONValue?) -> Double? {
            if case .number(let text)? = v { return Double(text) }
            return nil
        }
        #expect(json["tool"] == .string("pager-bench") && number(json["format"]) == 1)
        #expect(number(json["region_bytes"]) == Double(64 << 20))
        for key in ["tcp_round_trip", "local_fault", "naive_fault", "idle_4k", "pushing_4k", "idle_2m", "pushing_2m"] {
            let l = json["latency_ns"]?[key]
            let p50 = try #require(number(l?["p50"]), "\(key)"), p90 = try #require(number(l?["p90"]))
            let p99 = try #require(number(l?["p99"])), p999 = try #require(number(l?["p999"])), max = try #require(number(l?["max"]))
            #expect(p50 > 0 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max, "\(key): \(p50) \(p90) \(p99) \(p999) \(max)")
            #expect((number(l?["count"]) ?? 0) > 0, "\(key)")
        }
        for pattern in ["none", "sequential", "random", "strided", "working-set"] {
            let t = json["throughput"]?[pattern]
            #expect(number(t?["bytes"]) == Double(64 << 20), "every byte of the region arrived and was verified (\(pattern))")
            #expect((number(t?["seconds"]) ?? 0) > 0 && (number(t?["gbit_per_second"]) ?? 0) > 0 && (number(t?["vs_tcp_stream"]) ?? 0) > 0, "\(pattern)")
            #expect((number(t?["naive16_seconds"]) ?? 0) > 0 && (number(t?["vs_naive16"]) ?? 0) > 0, "\(pattern)")
            #expect((number(t?["dest_cpu_seconds"]) ?? 0) > 0 && (number(t?["source_cpu_seconds"]) ?? 0) > 0, "\(pattern)")
            let arrived = ["pages_by_demand", "pages_by_prefetch", "pages_by_push"].map { number(t?[$0]) ?? -1 }
            #expect(arrived.allSatisfy { $0 >= 0 } && arrived.reduce(0, +) == Double(64 << 8),
                    "every page installed once, by demand, prefetch or push (\(pattern)): \(arrived)")
        }
        guard case .array(let figures)? = json["figures"] else { Issue.record("no figures array"); return }
        let keys = figures.compactMap { f -> String? in if case .string(let k)? = f["key"] { return k } else { return nil } }
        for key in ["floor_wire_gbit", "floor_copy_s", "floor_copy_dest_cpu_s_per_gib", "floor_copy_source_cpu_s_per_gib", "naive_fault_p50_us",
                    "idle_4k_p50_vs_naive", "full_none_vs_copy_floor", "full_random_vs_naive16", "full_working_set_vs_naive16",
                    "full_none_dest_cpu_s_per_gib", "full_none_source_cpu_s_per_gib", "full_sequential_vs_random",
                    "tcp_round_trip_p50_us", "tcp_stream_gbit", "local_fault_p50_us", "local_install_gbit", "idle_4k_p50_us",
                    "pushing_4k_p99_us", "idle_2m_p50_us", "pushing_2m_p99_us", "full_none_gbit", "full_working_set_gbit",
                    "aes_gcm_seal_gbit", "aes_gcm_open_gbit", "aes_gcm_page_us", "plain_idle_4k_p50_us", "authenticated_idle_4k_p50_us",
                    "encrypted_idle_4k_p50_us", "plain_full_s", "authenticated_full_s", "encrypted_full_s", "encrypted_full_floor_s",
                    "encrypted_full_vs_floor", "outage_resume_p50_ms", "outage_resume_max_ms", "outage_fault_wait_max_ms",
                    "outage_faults_asked_again_mean", "outage_pages_in_flight_mean", "outage_resent_kib_mean", "outage_transfer_s",
                    "dense_none_s", "dense_random_s", "holes7_none_s", "holes7_random_s"] {
            #expect(keys.contains(key), "figure \(key) missing: \(keys)")
        }
        for f in figures where f["ratio"] != .null { #expect((number(f["ratio"]) ?? 0) > 0, "\(String(describing: f["key"]))") }
        #expect(json["peers"]?["criu lazy-pages"] != nil)
        let svg = try readWholeFile(plot)
        #expect(svg.hasPrefix("<svg") && svg.contains("polyline") && svg.hasSuffix("</svg>"))
    }
}
