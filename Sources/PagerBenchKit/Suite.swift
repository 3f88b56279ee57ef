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
    case peers

    public var summary: String {
        switch self {
        case .baselines: "raw TCP round trip and stream (and iperf3 when installed) on the same path, local userfaultfd fault and batched install"
        case .latency4k: "demand-fault latency of 4 KiB pages, idle link and while the background push runs (random access)"
        case .latency2m: "demand-fault latency of 2 MiB hugetlbfs pages, idle link and while the push runs (reserves huge pages for the run)"
        case .throughput: "time until the whole region is local, for access patterns none, sequential, random, strided and working-set"
        case .peers: "other pagers on the same machine: CRIU lazy-pages (probed) and QEMU's native postcopy against the pager on the same TCG guest"
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
    /// A `tc tbf` rate for the source's link (e.g. "10gbit"), namespaces only.
    public var link: String?
    public var progress: (Int, Int, String) -> Void = { _, _, _ in }
    let binaries: String

    public init(binaries: String) { self.binaries = binaries }

    private var pagerd: String { binaries + "/pagerd" }
    private var workload: String { binaries + "/pager-workload" }
    private var bench: String { binaries + "/pager-bench" }

    /// Steps each scenario reports to ``progress``.
    private func steps(_ s: Scenario) -> Int {
        switch s {
        case .baselines: 4
        case .latency4k, .latency2m: 2
        case .throughput: Self.patterns.count
        case .peers: 1
        }
    }

    static let patterns = ["none", "sequential", "random", "strided", "working-set"]

    public func run(_ scenarios: [Scenario]) throws -> BenchReport {
        if link != nil && loopback { throw HarnessError("--link shapes the veth between the namespaces; it cannot shape loopback") }
        let hosts = loopback ? nil : try TwoHosts(splitCPUs: true)
        if let link, let hosts { try hosts.shapeSource(rate: link) }
        let scratch = Scratch()
        let address = hosts == nil ? "127.0.0.1" : TwoHosts.sourceAddress
        let port = 20_000 + Int(processID() % 20_000)
        var report = BenchReport(sizeMiB: sizeMiB, transport: hosts == nil ? "loopback" : "veth between two network namespaces, one vCPU each",
                                 link: link)
        // The baselines run whenever a scenario needs them for its ratios.
        let needBaselines = scenarios.contains(.baselines) || scenarios.contains(.latency4k) || scenarios.contains(.throughput)
        let total = scenarios.filter { $0 != .baselines }.reduce(0) { $0 + steps($1) } + (needBaselines ? steps(.baselines) : 0)
        var step = 0
        func advance(_ label: String) {
            step += 1
            progress(step, total, label)
        }

        func spawn(source: Bool, _ binary: String, _ args: [String], log: String) throws -> ChildProcess {
            if let hosts { return try hosts.spawn(in: source ? hosts.source : hosts.dest, binary, args, log: log) }
            return try ChildProcess(binary, args, outputPath: log)
        }
        func run(source: Bool, _ binary: String, _ args: [String]) throws -> String {
            if let hosts { return try hosts.run(in: source ? hosts.source : hosts.dest, binary, args) }
            let (status, output) = try runProgram(binary, args)
            guard status == 0 else { throw HarnessError("\(binary) \(args.joined(separator: " ")) exited \(status): \(output)") }
            return output
        }

        let ram = scratch.file("bench.ram")
        try sh(workload, "fill", "--file", ram, "--size-mib", "\(sizeMiB)", "--seed", "9")

        /// One migration of the filled file; returns the workload's key=values and its latency CDF.
        func migrate(_ name: String, destFlags: [String], workloadArgs: [String]) throws -> ([String: Double], LatencySummary) {
            let source = try spawn(source: true, pagerd, ["source", "--listen", "\(address):\(port)", "--region", ram],
                                   log: scratch.file("source-\(name).log"))
            defer { source.signal(.terminate); source.wait(timeoutMilliseconds: 10_000) }
            try waitFor(source, toPrint: "serving 1 region")
            let socket = scratch.file("\(name).sock")
            let dest = try spawn(source: false, pagerd, ["dest", "--connect", "\(address):\(port)", "--uffd-socket", socket, "--once"] + destFlags,
                                 log: scratch.file("dest-\(name).log"))
            defer { dest.signal(.kill) }
            try waitFor(dest, toPrint: "waiting for userfaultfd handoffs")
            let cdf = scratch.file("\(name).cdf")
            let w = try spawn(source: false, workload, ["run", "--socket", socket, "--size-mib", "\(sizeMiB)", "--seed", "9", "--write-every", "0",
                                                        "--cdf-file", cdf] + workloadArgs,
                              log: scratch.file("workload-\(name).log"))
            let status = w.wait(timeoutMilliseconds: 300_000)
            dest.wait(timeoutMilliseconds: 30_000)
            guard status == 0, w.output.contains("workload: ok") else {
                throw HarnessError("\(name): workload failed (\(String(describing: status))): \(w.output)\n\(dest.output)")
            }
            let kv = keyValues(w.output)
            var summary = LatencySummary(keyValues: kv, prefix: "wait-")
            summary.cdf = LatencySummary.readCDF(cdf)
            return (kv, summary)
        }

        var rtt: LatencySummary?
        var localFault: LatencySummary?
        var streamSeconds: Double?
        var iperfGbit: Double?
        var installSeconds: Double?
        if needBaselines {
            // The baselines every ratio needs, measured once per run.
            let rawPort = port + 1
            let raw = try spawn(source: true, bench, ["raw-server", "--listen", "\(address):\(rawPort)"], log: scratch.file("raw.log"))
            defer { raw.signal(.kill) }
            try waitFor(raw, toPrint: "listening")
            advance("baseline: raw TCP round trips")
            let kv = keyValues(try run(source: false, bench, ["raw-client", "--connect", "\(address):\(rawPort)", "--count", "\(samples)", "--cdf-file", scratch.file("raw.cdf")]))
            var r = LatencySummary(keyValues: kv, prefix: "")
            r.count = samples
            r.cdf = LatencySummary.readCDF(scratch.file("raw.cdf"))
            rtt = r
            advance("baseline: raw TCP stream")
            streamSeconds = keyValues(try run(source: false, bench, ["raw-client", "--connect", "\(address):\(rawPort)", "--stream-mib", "\(sizeMiB)"]))["seconds"]
            if isExecutableFile("/usr/bin/iperf3") {
                let iperf = try spawn(source: true, "/usr/bin/iperf3", ["-s", "-1", "--forceflush", "-p", "\(port + 2)"], log: scratch.file("iperf3-server.log"))
                defer { iperf.signal(.kill) }
                try waitFor(iperf, toPrint: "Server listening")
                // -R: the server (source side) sends, the direction pages travel (and the shaped one).
                let out = try run(source: false, "/usr/bin/iperf3", ["-c", address, "-p", "\(port + 2)", "-t", "2", "-R", "-J"])
                iperfGbit = Self.iperfReceivedGbit(out)
            } else {
                report.notes.append("iperf3 is not installed (apt-get install iperf3): the raw-stream baseline is pager-bench's own only")
            }
            advance("baseline: local userfaultfd fault")
            localFault = LatencySummary(histogramOf: try LocalFaultBenchmark.run(pages: 20_000, touchCPU: 0, handlerCPU: 0))
            advance("baseline: local batched install")
            let install = try LocalInstallBenchmark.run(bytes: sizeMiB << 20)
            installSeconds = install
            let bytes = Double(sizeMiB << 20)
            report.latencies.append(("tcp_round_trip", "raw TCP round trip (24-byte request, 4 KiB reply)", rtt!))
            report.latencies.append(("local_fault", "local userfaultfd fault (handler on the same vCPU)", localFault!))
            report.figures.append(Figure(key: "tcp_round_trip_p50_us", label: "raw TCP round trip p50", value: Double(rtt!.p50) / 1000, unit: "µs"))
            report.figures.append(Figure(key: "tcp_stream_gbit", label: "raw TCP stream (pager-bench)", value: bytes * 8 / streamSeconds! / 1e9, unit: "Gbit/s"))
            if let iperfGbit {
                report.figures.append(Figure(key: "iperf3_gbit", label: "iperf3 stream (2 s)", value: iperfGbit, unit: "Gbit/s"))
            }
            report.figures.append(Figure(key: "local_fault_p50_us", label: "local userfaultfd fault p50", value: Double(localFault!.p50) / 1000, unit: "µs"))
            report.figures.append(Figure(key: "local_install_gbit", label: "local batched UFFDIO_COPY install", value: bytes * 8 / install / 1e9, unit: "Gbit/s"))
        }
        // What a fault could cost at best, from this run's baselines: a 4 KiB fault is a round trip
        // plus a local fault; a 2 MiB fault is a round trip plus moving 2 MiB at the raw stream's
        // rate plus installing it at the local install rate.
        let expectedIdle4k = rtt.flatMap { r in localFault.map { Double(r.p50 + $0.p50) } }
        let expectedIdle2m = rtt.flatMap { r in
            streamSeconds.flatMap { s in installSeconds.map { i in
                Double(r.p50) + Double(hugePageSize) / Double(sizeMiB << 20) * (s + i) * 1e9
            } }
        }

        func latencyScenario(_ suffix: String, backing: [String], count: Int) throws {
            let expectedIdle = suffix == "4k" ? expectedIdle4k : expectedIdle2m
            advance("pager: \(suffix) faults, idle link")
            let (_, idle) = try migrate("idle-\(suffix)", destFlags: ["--no-push", "--no-prefetch"],
                                        workloadArgs: backing + ["--access", "random", "--touch-pages", "\(count)"])
            advance("pager: \(suffix) faults while pushing")
            let (_, pushing) = try migrate("pushing-\(suffix)", destFlags: [], workloadArgs: backing + ["--access", "random", "--touch-pages", "\(count)"])
            report.latencies.append(("idle_\(suffix)", "\(suffix == "4k" ? "4 KiB" : "2 MiB") demand fault, idle link", idle))
            report.latencies.append(("pushing_\(suffix)", "\(suffix == "4k" ? "4 KiB" : "2 MiB") demand fault, push running", pushing))
            report.figures.append(Figure(key: "idle_\(suffix)_p50_us", label: "\(suffix == "4k" ? "4 KiB" : "2 MiB") fault p50, idle",
                                         value: Double(idle.p50) / 1000, unit: "µs",
                                         baseline: expectedIdle == nil ? nil : suffix == "4k" ? "round trip p50 + local fault p50"
                                             : "round trip p50 + 2 MiB at the raw stream rate + 2 MiB local install",
                                         ratio: expectedIdle.map { Double(idle.p50) / $0 }))
            report.figures.append(Figure(key: "pushing_\(suffix)_p99_us", label: "\(suffix == "4k" ? "4 KiB" : "2 MiB") fault p99, push running",
                                         value: Double(pushing.p99) / 1000, unit: "µs", baseline: "idle p50",
                                         ratio: Double(pushing.p99) / Double(Swift.max(1, idle.p50))))
        }
        if scenarios.contains(.latency4k) { try latencyScenario("4k", backing: [], count: samples) }
        if scenarios.contains(.latency2m) {
            let reservation = try HugePageReservation(pages: sizeMiB / 2)
            try latencyScenario("2m", backing: ["--backing", "hugetlb"], count: hugeSamples)
            _ = consume reservation
        }
        if scenarios.contains(.throughput) {
            let bytes = Double(sizeMiB << 20)
            for pattern in Self.patterns {
                advance("pager: full transfer, access \(pattern)")
                let (kv, _) = try migrate("full-\(pattern)", destFlags: [], workloadArgs: ["--access", pattern])
                guard let seconds = kv["touch-seconds"], Int(kv["pages"] ?? 0) * basePageSize == sizeMiB << 20 else {
                    throw HarnessError("full transfer (\(pattern)) did not verify the whole region: \(kv)")
                }
                report.throughput.append((pattern, seconds))
                report.figures.append(Figure(key: "full_\(pattern.split(separator: "-").joined(separator: "_"))_gbit", label: "full transfer, access \(pattern)",
                                             value: bytes * 8 / seconds / 1e9, unit: "Gbit/s", baseline: streamSeconds == nil ? nil : "raw TCP stream",
                                             ratio: streamSeconds.map { $0 / seconds }))
            }
        }
        if scenarios.contains(.peers) {
            advance("peers")
            report.peers.append(("criu lazy-pages", Self.probeCRIU()))
            if isExecutableFile("/usr/bin/qemu-system-x86_64"), let script = guestBuilderScript(binaries: binaries), !loopback {
                let guestDir = cachedGuestDirectory(builder: script)
                if !isReadableFile(guestDir + "/initrd.gz") { try sh("/bin/bash", script, guestDir, "128") }
                var results: [QEMUMigrationRun.Method: QEMUMigrationRun.Outcome] = [:]
                for method in [QEMUMigrationRun.Method.pager, .nativePostcopy] {
                    let h = try TwoHosts(splitCPUs: true)
                    var m = QEMUMigrationRun(binaries: binaries, guest: guestDir)
                    m.method = method
                    let o = try m.run(hosts: h, scratch: Scratch())
                    guard !o.mismatch else { throw HarnessError("QEMU \(method.rawValue): the guest found wrong memory") }
                    results[method] = o
                }
                let p = results[.pager]!, n = results[.nativePostcopy]!
                report.figures.append(Figure(key: "qemu_pager_total_s", label: "QEMU guest, pager: migrate to all RAM local", value: p.totalSeconds,
                                             unit: "s", baseline: "QEMU native postcopy total", ratio: p.totalSeconds / n.totalSeconds))
                report.figures.append(Figure(key: "qemu_pager_guest_stall_ms", label: "QEMU guest, pager: guest's longest stall",
                                             value: Double(p.guestPauseMilliseconds), unit: "ms", baseline: "QEMU native postcopy stall",
                                             ratio: Double(p.guestPauseMilliseconds) / Double(Swift.max(1, n.guestPauseMilliseconds))))
                report.peers.append(("qemu native postcopy", "same guest, same run: total \(BenchReport.number(n.totalSeconds, 3)) s, guest's longest stall \(n.guestPauseMilliseconds) ms, \(n.faultSummary) (pager: \(BenchReport.number(p.totalSeconds, 3)) s, \(p.guestPauseMilliseconds) ms)"))
            } else {
                report.peers.append(("qemu native postcopy", loopback ? "not run on loopback (needs the two namespaces)"
                                                                      : "QEMU is not installed (bash Deploy/setup.sh installs it); not compared"))
            }
        }
        return report
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
