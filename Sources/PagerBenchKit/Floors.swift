import PagerHarness
import PagerKernel
import PagerReport

/// The floors: what this machine allows for the pager's work, measured by `pager-floor-c`
/// (plain C, built next to pager-bench) on the same namespaces, CPUs and file as the pager.
///
/// - the wire floor: the region as one TCP stream into one reused buffer;
/// - the copy floor: the same stream, each read `UFFDIO_COPY`'d into a fresh registered
///   region, nothing else (any pager's least work for a full transfer);
/// - the naive pager: one handler thread, one blocking request per fault, fetching the page
///   (1) or the aligned 16 pages around it; the workload's own access order.
struct Floors {
    var wireSeconds: Double
    var copySeconds: Double
    /// CPU seconds of the copy floor's receiver and of its sender (the floor server's
    /// process for that connection).
    var copyDestinationCPU: Double
    var copySourceCPU: Double
    /// One-page naive faults (random access, idle link): the 4 KiB fault floor.
    var naiveFault: LatencySummary
}

/// One naive-pager run: its time, CPU and waits as `pager-floor-c naive` printed them.
struct NaiveRun {
    var seconds: Double
    var cpuSeconds: Double
    var fetches: Int
    var waits: LatencySummary
}

extension SuiteRun {
    var floorBinary: String { binaries + "/pager-floor-c" }

    /// The floor server on the source's side, started once per run.
    func floorServer() throws -> ChildProcess {
        if let floorServerProcess { return floorServerProcess }
        let server = try spawn(source: true, floorBinary, ["serve", address, "\(port + 3)", ram, "\(sizeMiB << 20)"],
                               log: scratch.file("floor-server.log"))
        try waitFor(server, toPrint: "floor-server listening")
        floorServerProcess = server
        return server
    }

    /// Runs one floor client on the destination's side; returns its key=values and the
    /// server's CPU seconds for that connection.
    private func floorClient(_ args: [String]) throws -> ([String: Double], Double) {
        let server = try floorServer()
        let before = occurrences(of: "floor-server connection", in: server.output)
        let out = try run(source: false, floorBinary, args)
        try waitFor(server, toPrint: "floor-server connection", occurrence: before + 1)
        let last = server.output.split(separator: "\n").last { $0.hasPrefix("floor-server connection") }.map(String.init) ?? ""
        let kv = keyValues(out)
        guard kv["mismatches"] == 0 else { throw HarnessError("\(floorBinary) \(args.joined(separator: " ")): pages differ from the source: \(out)") }
        return (kv, keyValues(last)["cpu-seconds"] ?? .nan)
    }

    /// The wire floor, the copy floor and the naive pager's 4 KiB fault. Each floor is the
    /// best of three read sizes: 2 MiB reads (a huge page at a time) leave the buffer out of
    /// the CPU's cache when UFFDIO_COPY reads it back, which measured 2.2x slower than 256 KiB
    /// reads here; the floor is what the machine allows, so the fastest counts.
    func measureFloors() throws -> Floors {
        let target = ["\(address)", "\(port + 3)", "\(sizeMiB << 20)", ram]
        advance("floor: wire and copy floor (C)")
        var wire: [String: Double] = [:], copy: [String: Double] = [:], copySource = Double.nan
        for readBytes in [256 << 10, 64 << 10, 2 << 20] {
            let (w, _) = try floorClient(["stream", "wire"] + target + ["\(readBytes)"])
            let (c, source) = try floorClient(["stream", "install"] + target + ["\(readBytes)"])
            report.notes.append("floor with \(readBytes >> 10) KiB reads: wire \(BenchReport.number(w["seconds"] ?? .nan, 3)) s, copy floor \(BenchReport.number(c["seconds"] ?? .nan, 3)) s (\(BenchReport.number(c["cpu-seconds"] ?? .nan, 3)) CPU s)")
            if (w["seconds"] ?? .infinity) < (wire["seconds"] ?? .infinity) { wire = w }
            if (c["seconds"] ?? .infinity) < (copy["seconds"] ?? .infinity) { copy = c; copySource = source }
        }
        advance("floor: naive pager, one page per fault (C)")
        let naive = try naivePager(fetchPages: 1, access: "random", touchPages: samples)
        return Floors(wireSeconds: wire["seconds"] ?? .nan, copySeconds: copy["seconds"] ?? .nan,
                      copyDestinationCPU: copy["cpu-seconds"] ?? .nan, copySourceCPU: copySource, naiveFault: naive.waits)
    }

    /// The naive C pager over this run's region: `touchPages` 0 touches all (a full transfer).
    func naivePager(fetchPages: Int, access: String, touchPages: Int) throws -> NaiveRun {
        let (kv, _) = try floorClient(["naive", address, "\(port + 3)", "\(sizeMiB << 20)", ram, "\(fetchPages)", access, "9", "\(touchPages)"])
        return NaiveRun(seconds: kv["seconds"] ?? .nan, cpuSeconds: kv["cpu-seconds"] ?? .nan, fetches: Int(kv["fetches"] ?? 0),
                        waits: LatencySummary(keyValues: kv, prefix: "wait-"))
    }

    /// Records the floors' figures (called once they are measured).
    func record(_ f: Floors) {
        let bytes = Double(sizeMiB << 20), gib = bytes / Double(1 << 30)
        report.latencies.append(("naive_fault", "naive C pager, one page per fault (idle link)", f.naiveFault))
        report.figures.append(Figure(key: "floor_wire_gbit", label: "wire floor (C): one stream into a reused buffer", value: bytes * 8 / f.wireSeconds / 1e9, unit: "Gbit/s"))
        report.figures.append(Figure(key: "floor_copy_s", label: "copy floor (C): stream + UFFDIO_COPY, best read size", value: f.copySeconds, unit: "s",
                                     baseline: "wire floor", ratio: f.copySeconds / f.wireSeconds))
        report.figures.append(Figure(key: "floor_copy_dest_cpu_s_per_gib", label: "copy floor CPU, destination", value: f.copyDestinationCPU / gib, unit: "s/GiB"))
        report.figures.append(Figure(key: "floor_copy_source_cpu_s_per_gib", label: "copy floor CPU, source", value: f.copySourceCPU / gib, unit: "s/GiB"))
        report.figures.append(Figure(key: "naive_fault_p50_us", label: "naive C pager fault p50 (1 page)", value: Double(f.naiveFault.p50) / 1000, unit: "µs"))
    }
}
