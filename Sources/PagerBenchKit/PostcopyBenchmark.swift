import PagerHarness
import PagerKernel
import PagerReport
import PagerWorkloads

/// The post-copy benchmark on a veth pair between two network namespaces, with its
/// baselines taken in the same run.
public struct PostcopyBenchmark {
    public var pagerd: String
    public var workload: String
    public var bench: String
    public var sizeMiB = 1024
    public var samples = 3000
    public var log: (String) -> Void

    public init(binaries: String, log: @escaping (String) -> Void) {
        pagerd = binaries + "/pagerd"
        workload = binaries + "/pager-workload"
        bench = binaries + "/pager-bench"
        self.log = log
    }

    public struct Results: Sendable {
        public var rawRoundTrip: LatencySummary
        public var rawStreamSeconds: Double
        public var localFault: LatencySummary
        public var localInstallSeconds: Double
        public var idleFault: LatencySummary
        public var pushingFault: LatencySummary
        public var fullTransferSeconds: Double
        /// Bytes the full-transfer workload verified (the whole region when it succeeded).
        public var fullTransferBytes: Int
        public var sizeMiB: Int
    }

    public func run() throws -> Results {
        let hosts = try TwoHosts(splitCPUs: true)
        let scratch = Scratch()
        let ram = scratch.file("bench.ram")
        try sh(workload, "fill", "--file", ram, "--size-mib", "\(sizeMiB)", "--seed", "9")

        log("baseline: raw TCP round trips (24-byte request, 4 KiB reply) on the veth pair")
        let raw = try hosts.spawn(in: hosts.source, bench, ["raw-server", "--listen", "\(TwoHosts.sourceAddress):7071"], log: scratch.file("raw.log"))
        defer { raw.signal(.kill) }
        try waitFor(raw, toPrint: "listening")
        let rtt = try keyValues(hosts.run(in: hosts.dest, bench, ["raw-client", "--connect", "\(TwoHosts.sourceAddress):7071", "--count", "\(samples)"]))
        let stream = try keyValues(hosts.run(in: hosts.dest, bench, ["raw-client", "--connect", "\(TwoHosts.sourceAddress):7071", "--stream-mib", "\(sizeMiB)"]))
        log("baseline: local userfaultfd fault (handler thread, same CPU) and local batched install of \(sizeMiB) MiB")
        let local = LatencySummary(histogramOf: try LocalFaultBenchmark.run(pages: 20_000, touchCPU: 0, handlerCPU: 0))
        let install = try LocalInstallBenchmark.run(bytes: sizeMiB << 20)

        func migrate(_ name: String, destFlags: [String], workloadFlags: [String]) throws -> [String: Double] {
            log("pager: \(name)")
            let source = try hosts.spawn(in: hosts.source, pagerd, ["source", "--listen", "\(TwoHosts.sourceAddress):7070", "--region", ram, "--key-file", scratch.keyFile],
                                         log: scratch.file("source-\(name).log"))
            defer { source.signal(.terminate); source.wait(timeoutMilliseconds: 10_000) }
            try waitFor(source, toPrint: "serving 1 region")
            let socket = scratch.file("\(name).sock")
            let dest = try hosts.spawn(in: hosts.dest, pagerd, ["dest", "--connect", "\(TwoHosts.sourceAddress):7070", "--uffd-socket", socket, "--once", "--key-file", scratch.keyFile] + destFlags,
                                       log: scratch.file("dest-\(name).log"))
            try waitFor(dest, toPrint: "waiting for userfaultfd handoffs")
            let w = try hosts.spawn(in: hosts.dest, workload, ["run", "--socket", socket, "--size-mib", "\(sizeMiB)", "--seed", "9", "--write-every", "0"] + workloadFlags,
                                    log: scratch.file("workload-\(name).log"))
            let status = w.wait(timeoutMilliseconds: 300_000)
            dest.wait(timeoutMilliseconds: 30_000)
            guard status == 0, w.output.contains("workload: ok") else {
                throw HarnessError("\(name): workload failed (\(String(describing: status))): \(w.output)\n\(dest.output)")
            }
            return keyValues(w.output)
        }
        let idle = try migrate("idle", destFlags: ["--no-push", "--no-prefetch"], workloadFlags: ["--access", "random", "--touch-pages", "\(samples)"])
        let pushing = try migrate("pushing", destFlags: [], workloadFlags: ["--access", "random", "--touch-pages", "\(samples)"])
        let full = try migrate("full", destFlags: [], workloadFlags: ["--access", "none"])

        var rawSummary = LatencySummary(keyValues: rtt, prefix: "")
        rawSummary.count = samples
        return Results(rawRoundTrip: rawSummary, rawStreamSeconds: stream["seconds"] ?? 0, localFault: local,
                       localInstallSeconds: install, idleFault: LatencySummary(keyValues: idle, prefix: "wait-"), pushingFault: LatencySummary(keyValues: pushing, prefix: "wait-"),
                       fullTransferSeconds: full["touch-seconds"] ?? 0, fullTransferBytes: Int(full["pages"] ?? 0) * basePageSize,
                       sizeMiB: sizeMiB)
    }
}

extension LatencySummary {
    /// A summary printed as `key=value` pairs by another process (`pager-workload run`:
    /// `wait-p50-ns=...`, prefix "wait-"; `raw-client`: `p50-ns=...`): count from `waits`.
    public init(keyValues kv: [String: Double], prefix: String) {
        self.init(count: Int(kv["waits"] ?? 0), p50: UInt64(kv["\(prefix)p50-ns"] ?? 0), p90: UInt64(kv["\(prefix)p90-ns"] ?? 0),
                  p99: UInt64(kv["\(prefix)p99-ns"] ?? 0), mean: 0)
        p999 = UInt64(kv["\(prefix)p999-ns"] ?? 0)
        max = UInt64(kv["\(prefix)max-ns"] ?? 0)
    }

    /// `{"count":…,"p50":…,"p90":…,"p99":…,"p999":…,"max":…}` in nanoseconds.
    public var json: String {
        "{\"count\":\(count),\"p50\":\(p50),\"p90\":\(p90),\"p99\":\(p99),\"p999\":\(p999),\"max\":\(max)}"
    }
}

extension PostcopyBenchmark.Results {
    /// The results as one JSON object with stable keys (documented in the README).
    public var json: String {
        let bytes = sizeMiB << 20
        func number(_ x: Double) -> String { x.isFinite ? "\(x)" : "null" }
        let idleExpected = Double(rawRoundTrip.p50 + localFault.p50)
        return """
        {"scenario":"postcopy","region_bytes":\(bytes),"page_size":4096,\
        "baselines":{"tcp_round_trip_ns":\(rawRoundTrip.json),"tcp_stream_seconds":\(number(rawStreamSeconds)),\
        "local_fault_ns":\(localFault.json),"local_install_seconds":\(number(localInstallSeconds))},\
        "pager":{"idle_fault_ns":\(idleFault.json),"pushing_fault_ns":\(pushingFault.json),\
        "full_transfer_seconds":\(number(fullTransferSeconds)),"full_transfer_bytes":\(fullTransferBytes)},\
        "ratios":{"idle_p50_vs_round_trip_plus_local_fault":\(number(Double(idleFault.p50) / idleExpected)),\
        "pushing_p99_vs_idle_p50":\(number(Double(pushingFault.p99) / Double(idleFault.p50))),\
        "full_transfer_vs_local_install":\(number(fullTransferSeconds / localInstallSeconds)),\
        "full_transfer_vs_tcp_stream":\(number(fullTransferSeconds / rawStreamSeconds))}}
        """
    }
}
