import PagerHarness
import PagerKernel
import PagerReport
import PagerWorkloads

/// One `pager-bench run`: the hosts (or loopback), the scratch directory and the report the
/// scenarios fill in, and the same-run baselines the later scenarios' ratios use.
final class SuiteRun {
    let sizeMiB: Int
    let samples: Int
    let loopback: Bool
    let binaries: String
    let pagerd: String
    let workload: String
    let bench: String
    let hosts: TwoHosts?
    let scratch = Scratch()
    /// The source's address: the source namespace's, or loopback.
    let address: String
    /// The source daemon's port (the raw baseline server uses the next, iperf3 the one after).
    let port = 20_000 + Int(processID() % 20_000)
    /// The file every migration serves (filled once per run).
    let ram: String
    var report: BenchReport
    private let progress: (Int, Int, String) -> Void
    private let total: Int
    private var step = 0

    // The baselines, once measured.
    var rtt: LatencySummary?
    var localFault: LatencySummary?
    var streamSeconds: Double?
    var iperfGbit: Double?
    var installSeconds: Double?
    var floors: Floors?
    /// `pager-floor-c serve`, once started (``floorServer()``); killed with the run.
    var floorServerProcess: ChildProcess?

    init(_ suite: BenchSuite, steps total: Int) throws {
        sizeMiB = suite.sizeMiB
        samples = suite.samples
        loopback = suite.loopback
        binaries = suite.binaries
        pagerd = suite.pagerd
        workload = suite.workload
        bench = suite.bench
        progress = suite.progress
        self.total = total
        hosts = suite.loopback ? nil : try TwoHosts(splitCPUs: true)
        if let link = suite.link, let hosts { try hosts.shapeSource(rate: link) }
        address = hosts == nil ? "127.0.0.1" : TwoHosts.sourceAddress
        ram = scratch.file("bench.ram")
        report = BenchReport(sizeMiB: suite.sizeMiB, transport: hosts == nil ? "loopback" : "veth between two network namespaces, one vCPU each",
                             link: suite.link)
    }

    func advance(_ label: String) {
        step += 1
        progress(step, total, label)
    }

    /// Starts `binary` on the source's side or the destination's.
    func spawn(source: Bool, _ binary: String, _ args: [String], log: String) throws -> ChildProcess {
        if let hosts { return try hosts.spawn(in: source ? hosts.source : hosts.dest, binary, args, log: log) }
        return try ChildProcess(binary, args, outputPath: log)
    }

    /// Runs `binary` to completion on the source's side or the destination's; requires success.
    func run(source: Bool, _ binary: String, _ args: [String]) throws -> String {
        if let hosts { return try hosts.run(in: source ? hosts.source : hosts.dest, binary, args) }
        let (status, output) = try runProgram(binary, args)
        guard status == 0 else { throw HarnessError("\(binary) \(args.joined(separator: " ")) exited \(status): \(output)") }
        return output
    }

    /// One migration of the filled file; returns the workload's key=values and its latency CDF.
    /// `during` runs once the workload has started (fault injection), given the destination.
    func migrate(_ name: String, destFlags: [String], workloadArgs: [String], protection: Protection = .authenticated,
                 during: ((ChildProcess) throws -> Void)? = nil) throws -> ([String: Double], LatencySummary) {
        let m = try migration(name, destFlags: destFlags, workloadArgs: workloadArgs, protection: protection, during: during)
        return (m.workload, m.waits)
    }

    /// What one migration did, as its processes reported it.
    struct Migration {
        /// The workload's key=values (`touch-seconds`, `pages`, `wait-p50-ns`, ...).
        var workload: [String: Double]
        var waits: LatencySummary
        /// CPU seconds of `pagerd dest` plus the workload, and of `pagerd source` (whole lives).
        var destinationCPU: Double
        var sourceCPU: Double
        /// The destination's "pages arrived" counts: by demand, prefetch, push.
        var arrivals: (demand: Int, prefetch: Int, push: Int)
        var duplicates: Int
    }

    /// One migration of the filled file (see ``migrate(_:destFlags:workloadArgs:protection:during:)``).
    /// `region`: the file served (this run's filled file when nil).
    func migration(_ name: String, destFlags: [String], workloadArgs: [String], protection: Protection = .authenticated,
                   region: String? = nil, during: ((ChildProcess) throws -> Void)? = nil) throws -> Migration {
        let keys = protection.arguments(keyFile: scratch.keyFile)
        let source = try spawn(source: true, pagerd, ["source", "--listen", "\(address):\(port)", "--region", region ?? ram] + keys.source,
                               log: scratch.file("source-\(name).log"))
        defer { source.signal(.terminate); source.wait(timeoutMilliseconds: 10_000) }
        try waitFor(source, toPrint: "serving 1 region")
        let socket = scratch.file("\(name).sock")
        let dest = try spawn(source: false, pagerd, ["dest", "--connect", "\(address):\(port)", "--uffd-socket", socket, "--once"] + keys.dest + destFlags,
                             log: scratch.file("dest-\(name).log"))
        defer { dest.signal(.kill) }
        try waitFor(dest, toPrint: "waiting for userfaultfd handoffs")
        let cdf = scratch.file("\(name).cdf")
        let w = try spawn(source: false, workload, ["run", "--socket", socket, "--size-mib", "\(sizeMiB)", "--seed", "9", "--write-every", "0",
                                                    "--cdf-file", cdf] + workloadArgs,
                          log: scratch.file("workload-\(name).log"))
        try during?(dest)
        let status = w.wait(timeoutMilliseconds: 300_000)
        dest.wait(timeoutMilliseconds: 30_000)
        guard status == 0, w.output.contains("workload: ok") else {
            throw HarnessError("\(name): workload failed (\(String(describing: status))): \(w.output)\n\(dest.output)")
        }
        // The figure is only what it says when the session really ran with that protection.
        guard dest.output.contains("(\(protection.logged))") else {
            throw HarnessError("\(name): the destination did not report a session \(protection.logged): \(dest.output)")
        }
        source.signal(.terminate)
        source.wait(timeoutMilliseconds: 10_000)
        let kv = keyValues(w.output)
        var summary = LatencySummary(keyValues: kv, prefix: "wait-")
        summary.cdf = LatencySummary.readCDF(cdf)
        let arrived = numbers(after: "pages arrived", in: dest.output)
        let installed = numbers(after: "pages installed", in: dest.output)
        return Migration(workload: kv, waits: summary, destinationCPU: (dest.cpuSeconds ?? .nan) + (w.cpuSeconds ?? .nan),
                         sourceCPU: source.cpuSeconds ?? .nan,
                         arrivals: (arrived.count > 0 ? arrived[0] : -1, arrived.count > 1 ? arrived[1] : -1, arrived.count > 2 ? arrived[2] : -1),
                         duplicates: installed.count > 2 ? installed[2] : -1)
    }

    /// Touches (and gives back) four regions' worth of memory once, before anything is
    /// measured: on these VMs the first touch of guest memory the host has not backed yet
    /// costs the hypervisor's fault, and whichever measurement got such memory first ran up to
    /// 3x slower (a 1 GiB transfer 3.2 s in one round, 1.0 s in the next). Afterwards the
    /// floors and the pager draw on the same backed memory.
    func warmMemory() throws {
        let bytes = 4 * (sizeMiB << 20)
        let memory = try MemoryMapping.anonymous(length: bytes)
        for at in stride(from: 0, to: bytes, by: basePageSize) { (memory.base + at).storeBytes(of: 1, as: UInt8.self) }
    }

    /// The baselines every ratio needs, measured once per run: raw TCP round trips and stream
    /// (and iperf3), a local userfaultfd fault, a local batched install.
    func baselines() throws {
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
            iperfGbit = BenchSuite.iperfReceivedGbit(out)
        } else {
            report.notes.append("iperf3 is not installed (apt-get install iperf3): the raw-stream baseline is pager-bench's own only")
        }
        advance("baseline: local userfaultfd fault")
        localFault = LatencySummary(histogramOf: try LocalFaultBenchmark.run(pages: 20_000, touchCPU: 0, handlerCPU: 0))
        advance("baseline: local batched install")
        let install = try LocalInstallBenchmark.run(bytes: sizeMiB << 20)
        installSeconds = install
        let f = try measureFloors()
        floors = f
        record(f)
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
    var expectedIdle4k: Double? { rtt.flatMap { r in localFault.map { Double(r.p50 + $0.p50) } } }
    var expectedIdle2m: Double? {
        rtt.flatMap { r in
            streamSeconds.flatMap { s in installSeconds.map { i in
                Double(r.p50) + Double(hugePageSize) / Double(sizeMiB << 20) * (s + i) * 1e9
            } }
        }
    }

    /// Demand faults of 4 KiB ("4k") or 2 MiB ("2m") pages, on an idle link and while the
    /// push runs, against what this run's baselines say a fault could cost at best.
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
        if suffix == "4k", let floors {
            report.figures.append(Figure(key: "idle_4k_p50_vs_naive", label: "4 KiB fault p50, idle", value: Double(idle.p50) / 1000, unit: "µs",
                                         baseline: "naive C pager p50 (1 page per fault)",
                                         ratio: Double(idle.p50) / Double(Swift.max(1, floors.naiveFault.p50))))
        }
        report.figures.append(Figure(key: "pushing_\(suffix)_p99_us", label: "\(suffix == "4k" ? "4 KiB" : "2 MiB") fault p99, push running",
                                     value: Double(pushing.p99) / 1000, unit: "µs", baseline: "idle p50",
                                     ratio: Double(pushing.p99) / Double(Swift.max(1, idle.p50))))
    }

    /// Full transfers, one per access pattern, against the raw TCP stream, the copy floor and
    /// the naive 16-page C pager run on the same pattern right after.
    func throughput() throws {
        let bytes = Double(sizeMiB << 20), gib = bytes / Double(1 << 30)
        for pattern in BenchSuite.patterns {
            advance("pager: full transfer, access \(pattern)")
            let m = try migration("full-\(pattern)", destFlags: [], workloadArgs: ["--access", pattern])
            let kv = m.workload
            guard let seconds = kv["touch-seconds"], Int(kv["pages"] ?? 0) * basePageSize == sizeMiB << 20 else {
                throw HarnessError("full transfer (\(pattern)) did not verify the whole region: \(kv)")
            }
            advance("floor: naive 16-page pager, access \(pattern)")
            let naive = try naivePager(fetchPages: 16, access: pattern, touchPages: 0)
            report.throughput.append((pattern, seconds))
            let key = pattern.split(separator: "-").joined(separator: "_")
            report.transfers[pattern] = TransferDetail(naive16Seconds: naive.seconds, naive16CPU: naive.cpuSeconds, destinationCPU: m.destinationCPU,
                                                       sourceCPU: m.sourceCPU, demand: m.arrivals.demand, prefetch: m.arrivals.prefetch,
                                                       push: m.arrivals.push, duplicates: m.duplicates)
            report.figures.append(Figure(key: "full_\(key)_gbit", label: "full transfer, access \(pattern)",
                                         value: bytes * 8 / seconds / 1e9, unit: "Gbit/s", baseline: streamSeconds == nil ? nil : "raw TCP stream",
                                         ratio: streamSeconds.map { $0 / seconds }))
            if let floors {
                report.figures.append(Figure(key: "full_\(key)_vs_copy_floor", label: "full transfer, access \(pattern)", value: seconds, unit: "s",
                                             baseline: "copy floor (C)", ratio: seconds / floors.copySeconds))
            }
            report.figures.append(Figure(key: "full_\(key)_vs_naive16", label: "full transfer, access \(pattern)", value: seconds, unit: "s",
                                         baseline: "naive C pager, 16-page fetches (\(BenchReport.number(naive.seconds, 3)) s)", ratio: seconds / naive.seconds))
            if pattern == "none", let floors {
                report.figures.append(Figure(key: "full_none_dest_cpu_s_per_gib", label: "CPU, destination (pagerd dest + workload)",
                                             value: m.destinationCPU / gib, unit: "s/GiB", baseline: "copy floor's receiver",
                                             ratio: m.destinationCPU / floors.copyDestinationCPU))
                report.figures.append(Figure(key: "full_none_source_cpu_s_per_gib", label: "CPU, source (pagerd source, whole life)",
                                             value: m.sourceCPU / gib, unit: "s/GiB", baseline: "copy floor's sender",
                                             ratio: m.sourceCPU / floors.copySourceCPU))
            }
        }
        let times = Dictionary(uniqueKeysWithValues: report.throughput.map { ($0.pattern, $0.seconds) })
        if let sequential = times["sequential"], let random = times["random"] {
            report.figures.append(Figure(key: "full_sequential_vs_random", label: "full transfer, sequential", value: sequential, unit: "s",
                                         baseline: "random", ratio: sequential / random))
        }
    }

    /// Other pagers on this machine: CRIU probed, QEMU's native postcopy against the pager.
    func peers() throws {
        advance("peers")
        report.peers.append(("criu lazy-pages", BenchSuite.probeCRIU()))
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
}
