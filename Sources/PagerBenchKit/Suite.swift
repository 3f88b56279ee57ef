import PagerHarness
import PagerKernel
import PagerReport
import PagerWorkloads

/// The named scenarios of `pager-bench run` (`pager-bench list` prints them).
public enum Scenario: String, CaseIterable, Sendable {
    case baselines
    case latency4k = "latency-4k"
    case latency2m = "latency-2m"
    case throughput
    case protection
    case peers
    case outages
    case holes

    public var summary: String {
        switch self {
        case .baselines: "raw TCP round trip and stream (and iperf3 when installed) on the same path, local userfaultfd fault and batched install"
        case .latency4k: "demand-fault latency of 4 KiB pages, idle link and while the background push runs (random access)"
        case .latency2m: "demand-fault latency of 2 MiB hugetlbfs pages, idle link and while the push runs (reserves huge pages for the run)"
        case .throughput: "time until the whole region is local, for access patterns none, sequential, random, strided and working-set"
        case .protection: "what authentication and encryption cost: 4 KiB fault p50 and full transfer, plain vs authenticated vs encrypted in interleaved rounds, next to libcrypto's AES-256-GCM rate"
        case .peers: "other pagers on the same machine: CRIU lazy-pages (probed) and QEMU's native postcopy against the pager on the same TCG guest"
        case .holes: "scattered zero pages: a region with every 7th page a hole against the same region with every page data, no access and random access, in interleaved rounds"
        case .outages: "both connections reset (ss -K) five times during a full transfer: each resume's pause next to the raw round trip, fault waits, what was sent again, and the transfer against the same one without resets"
        }
    }
}

/// One measured figure, with the same-run baseline it is compared with.
public struct Figure: Sendable {
    public var key: String
    public var label: String
    public var value: Double
    public var unit: String
    public var baseline: String?
    public var ratio: Double?
}

/// A full transfer next to the naive 16-page C pager on the same pattern, with CPU seconds and
/// how the pages arrived (the destination's "pages arrived" and duplicates dropped).
public struct TransferDetail: Sendable {
    public var naive16Seconds: Double
    public var naive16CPU: Double
    /// `pagerd dest` plus the workload; `pagerd source` over its whole life.
    public var destinationCPU: Double
    public var sourceCPU: Double
    public var demand: Int
    public var prefetch: Int
    public var push: Int
    public var duplicates: Int
}

/// Everything one `pager-bench run` measured.
public struct BenchReport: Sendable {
    public var sizeMiB: Int
    public var transport: String
    public var link: String?
    public var figures: [Figure] = []
    /// Latency distributions by key (`idle_4k`, `pushing_4k`, `idle_2m`, `pushing_2m`, baselines).
    public var latencies: [(key: String, label: String, summary: LatencySummary)] = []
    /// Access pattern -> seconds until the whole region was local (and verified).
    public var throughput: [(pattern: String, seconds: Double)] = []
    /// Per access pattern: the naive pager's time and what each side spent and received.
    public var transfers: [String: TransferDetail] = [:]
    public var peers: [(name: String, status: String)] = []
    public var notes: [String] = []

    public func figure(_ key: String) -> Figure? { figures.first { $0.key == key } }
}

/// Runs the scenarios: a source and a destination in two network namespaces joined by a veth
/// pair (one vCPU each when there are two), or both on loopback; every figure next to a
/// baseline measured in the same run.
public final class BenchSuite {
    public var sizeMiB = 1024
    /// Faults sampled per 4 KiB latency figure (and raw round trips).
    public var samples = 3000
    /// Faults sampled per 2 MiB latency figure.
    public var hugeSamples = 200
    public var loopback = false
    /// Interleaved rounds of plain, authenticated and encrypted migrations in `protection`.
    public var protectionRounds = 3
    /// Interleaved rounds of the dense and holed regions in `holes`.
    public var holeRounds = 3
    /// A `tc tbf` rate for the source's link (e.g. "10gbit"), namespaces only.
    public var link: String?
    public var progress: (Int, Int, String) -> Void = { _, _, _ in }
    let binaries: String

    public init(binaries: String) { self.binaries = binaries }

    var pagerd: String { binaries + "/pagerd" }
    var workload: String { binaries + "/pager-workload" }
    var bench: String { binaries + "/pager-bench" }

    /// Steps each scenario reports to ``progress``.
    private func steps(_ s: Scenario) -> Int {
        switch s {
        case .baselines: 6
        case .latency4k, .latency2m: 2
        case .throughput: 2 * Self.patterns.count
        case .protection: 1 + protectionRounds * Protection.allCases.count
        case .peers: 1
        case .outages: 2
        case .holes: 4 * holeRounds
        }
    }

    static let patterns = ["none", "sequential", "random", "strided", "working-set"]

    public func run(_ scenarios: [Scenario]) throws -> BenchReport {
        if link != nil && loopback { throw HarnessError("--link shapes the veth between the namespaces; it cannot shape loopback") }
        // The baselines run whenever a scenario needs them for its ratios.
        let needBaselines = scenarios.contains(.baselines) || scenarios.contains(.latency4k) || scenarios.contains(.throughput)
            || scenarios.contains(.protection) || scenarios.contains(.outages) || scenarios.contains(.holes)
        let total = scenarios.filter { $0 != .baselines }.reduce(0) { $0 + steps($1) } + (needBaselines ? steps(.baselines) : 0)
        let run = try SuiteRun(self, steps: total)
        try sh(workload, "fill", "--file", run.ram, "--size-mib", "\(sizeMiB)", "--seed", "9")
        try run.warmMemory()
        if needBaselines { try run.baselines() }
        if scenarios.contains(.latency4k) { try run.latencyScenario("4k", backing: [], count: samples) }
        if scenarios.contains(.latency2m) {
            let reservation = try HugePageReservation(pages: sizeMiB / 2)
            try run.latencyScenario("2m", backing: ["--backing", "hugetlb"], count: hugeSamples)
            _ = consume reservation
        }
        if scenarios.contains(.throughput) { try run.throughput() }
        if scenarios.contains(.protection) { try run.protectionScenario(rounds: protectionRounds) }
        if scenarios.contains(.outages) { try run.outageScenario() }
        if scenarios.contains(.holes) { try run.holeScenario(rounds: holeRounds) }
        if scenarios.contains(.peers) { try run.peers() }
        return run.report
    }

    /// `end.sum_received.bits_per_second` of `iperf3 -J` output, in Gbit/s.
    static func iperfReceivedGbit(_ json: String) -> Double? {
        guard let r = json.firstRange(of: "\"sum_received\"") else { return nil }
        let rest = json[r.upperBound...]
        guard let b = rest.firstRange(of: "\"bits_per_second\":") else { return nil }
        let number = rest[b.upperBound...].drop(while: { $0 == " " || $0 == "\t" }).prefix(while: { "0123456789.e+-".contains($0) })
        return Double(number).map { $0 / 1e9 }
    }

    /// What CRIU can do here: its version and `criu check`'s verdict, or why it cannot run.
    static func probeCRIU() -> String {
        let candidates: [String] = ["/usr/sbin/criu", "/usr/bin/criu"]
        guard let path = candidates.first(where: { isExecutableFile($0) }) else {
            return "not installed (apt-get install criu); not compared"
        }
        let first = (try? runProgram(path, ["--version"]))?.output.split(separator: "\n").first.map(String.init) ?? "unknown version"
        let version = "criu " + (first.split(separator: " ").last.map(String.init) ?? first)
        guard let (status, output) = try? runProgram(path, ["check"]) else { return "\(version): could not run criu check" }
        let lines = output.split(separator: "\n").map(String.init)
        // The first error that says something (criu first reports its helper processes' exits).
        let firstError = lines.first { $0.hasPrefix("Error") && !$0.contains("exited, status=") } ?? lines.last ?? ""
        return status == 0 ? "\(version): criu check passed; lazy-pages runs are not automated by pager-bench yet, so no figures"
                           : "\(version) cannot run on this kernel (criu check: \(firstError)); not compared"
    }
}
