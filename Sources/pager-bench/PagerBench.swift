import ArgumentParser
import PagerBenchKit
import PagerDestination
import PagerHarness
import PagerKernel
import PagerQEMU
import PagerReport
import PagerTrust
import PagerWire
import PagerWorkloads

@main
struct PagerBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pager-bench",
        abstract: "Measures the pager against baselines taken in the same run, and prints ratios.",
        subcommands: [Run.self, List.self, Postcopy.self, Dirty.self, Flood.self, QEMUCompare.self, AB.self, FaultLocal.self, RawServer.self, RawClient.self, QMPCommand.self],
        defaultSubcommand: Run.self
    )
}

/// The benchmark: the named scenarios, every figure next to a same-run baseline.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run benchmark scenarios (default: all of them) and print figures with their same-run baselines and ratios.",
        discussion: """
        Creates two network namespaces joined by a veth pair (each given its own vCPU when
        there are two), runs pagerd source in one and pagerd dest plus a workload in the other,
        and removes them afterwards; --loopback runs both on 127.0.0.1 instead. Needs root.
        `pager-bench list` names the scenarios. --json prints one JSON object (keys in the
        README); --plot writes an SVG with latency CDFs and throughput bars.
        """
    )
    @Argument(help: "Scenarios to run (see `pager-bench list`); none: all.") var scenarios: [String] = []
    @Option(name: .customLong("size-mib"), help: "Region size in MiB.") var sizeMiB = 1024
    @Option(help: "Faults sampled per 4 KiB latency figure (and raw round trips).") var samples = 3000
    @Option(help: "Faults sampled per 2 MiB latency figure.") var hugeSamples = 200
    @Option(help: "Interleaved rounds of plain, authenticated and encrypted migrations in the protection scenario.") var protectionRounds = 3
    @Option(help: "Interleaved rounds of the dense and holed regions in the holes scenario.") var holeRounds = 3
    @Flag(help: "Source and destination on loopback instead of two namespaces.") var loopback = false
    @Option(help: "Shape the source's link with tc tbf to this rate, e.g. 10gbit (namespaces only).") var link: String?
    @Flag(help: "Print one JSON object instead of the table.") var json = false
    @Option(help: "Write an SVG picture (latency CDFs, throughput) to this file.") var plot: String?

    func run() throws {
        let chosen = try scenarios.isEmpty ? Scenario.allCases : scenarios.map { name in
            guard let s = Scenario(rawValue: name) else {
                throw ValidationError("unknown scenario \(name); `pager-bench list` names them")
            }
            return s
        }
        let suite = BenchSuite(binaries: executableDirectory())
        suite.sizeMiB = sizeMiB
        suite.samples = samples
        suite.hugeSamples = hugeSamples
        suite.loopback = loopback
        suite.protectionRounds = protectionRounds
        suite.holeRounds = holeRounds
        suite.link = link
        let started = monotonicNanoseconds()
        let terminal = standardErrorIsTerminal
        suite.progress = { step, total, label in
            let width = 30
            let filled = min(width, width * step / max(1, total))
            let bar = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "]"
            let elapsed = (monotonicNanoseconds() - started) / 1_000_000_000
            let line = "\(bar) \(step)/\(total) \(elapsed) s  \(label)"
            writeStandardError(terminal ? "\r\u{1B}[K" + line : line + "\n")
        }
        let report = try suite.run(chosen)
        if terminal { writeStandardError("\r\u{1B}[K") }
        if let plot { try writeWholeFile(plot, report.svg) }
        print(json ? report.json : report.table)
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Name the scenarios `pager-bench run` knows.")
    func run() {
        for s in Scenario.allCases { print(s.rawValue + String(repeating: " ", count: max(1, 12 - s.rawValue.count)) + s.summary) }
        print("postcopy    (separate command) the post-copy targets of the TCP issue: idle and loaded fault ratios, full transfer vs local install")
        print("dirty       (separate command) dirty-page scan cost, first-write cost, pause at the switch with and without pre-copy")
        print("flood       (separate command) a destination's handshake time with and without a held connection flood (admission control)")
    }
}

/// The post-copy benchmark between two network namespaces, with same-run baselines.
struct Postcopy: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Demand-fault latency (idle and while pushing) and full-transfer time over a veth pair, with same-run baselines.",
        discussion: "Needs root (network namespaces, userfaultfd). Creates and removes two namespaces joined by a veth pair."
    )
    @Option(name: .customLong("size-mib"), help: "Region size in MiB.") var sizeMiB = 1024
    @Option(help: "Faults sampled for each latency figure (and raw round trips).") var samples = 3000
    @Flag(help: "Print one JSON object (keys documented in the README) instead of the table.") var json = false

    func run() throws {
        let quiet = json
        var bench = PostcopyBenchmark(binaries: executableDirectory()) { if !quiet { print("  ... \($0)") } }
        bench.sizeMiB = sizeMiB
        bench.samples = samples
        let r = try bench.run()
        if json {
            print(r.json)
            return
        }
        let expectedIdle = Double(r.rawRoundTrip.p50 + r.localFault.p50)
        func us(_ ns: UInt64) -> String { formatMicros(ns) }
        func ratio(_ x: Double) -> String { String(format: 2, x) }
        print("""

        post-copy over a veth pair, \(r.sizeMiB) MiB region, 4 KiB pages, \(samples) sampled faults
        baselines (same run)
          raw TCP round trip, 4 KiB reply     p50 \(us(r.rawRoundTrip.p50))  p99 \(us(r.rawRoundTrip.p99))
          raw TCP stream of \(r.sizeMiB) MiB           \(String(format: 2, r.rawStreamSeconds)) s (\(Int(Double(r.sizeMiB) / r.rawStreamSeconds)) MiB/s)
          local userfaultfd fault              p50 \(us(r.localFault.p50))  p99 \(us(r.localFault.p99))
          local batched install of \(r.sizeMiB) MiB    \(String(format: 2, r.localInstallSeconds)) s
        pager
          demand fault, idle link              p50 \(us(r.idleFault.p50))  p90 \(us(r.idleFault.p90))  p99 \(us(r.idleFault.p99))  p99.9 \(us(r.idleFault.p999))  max \(us(r.idleFault.max))
          demand fault, push running           p50 \(us(r.pushingFault.p50))  p90 \(us(r.pushingFault.p90))  p99 \(us(r.pushingFault.p99))  p99.9 \(us(r.pushingFault.p999))  max \(us(r.pushingFault.max))
          full transfer of \(r.sizeMiB) MiB            \(String(format: 2, r.fullTransferSeconds)) s (\(Int(Double(r.sizeMiB) / r.fullTransferSeconds)) MiB/s)
        ratios (target)
          idle p50 / (round trip p50 + local fault p50)   \(ratio(Double(r.idleFault.p50) / expectedIdle))  (<= 1.2)
          p99 while pushing / idle p50                   \(ratio(Double(r.pushingFault.p99) / Double(r.idleFault.p50)))  (<= 3)
          full transfer / local batched install          \(ratio(r.fullTransferSeconds / r.localInstallSeconds))  (<= 1.5)
          full transfer / raw TCP stream                 \(ratio(r.fullTransferSeconds / r.rawStreamSeconds))
        """)
    }
}

/// Admission control: a real destination's handshake on a flooded `pagerd source` (loopback).
struct Flood: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Median handshake time of a real destination with and without a flood of idle connections, as ratios.",
        discussion: "Loopback only (the flood comes from 127.0.0.2 onwards); no root needed. Two floods: one held open, one that re-opens every connection the source evicts."
    )
    @Option(help: "Idle connections the flood holds open.") var connections = 300
    @Option(help: "Loopback hosts the flood comes from (over 8 per host, the per-host cap evicts; over 64 in all, the global cap).") var hosts = 40
    @Option(help: "Handshakes timed with and without the flood.") var samples = 50

    func run() throws {
        var bench = FloodBenchmark(binaries: executableDirectory())
        bench.connections = connections
        bench.hosts = hosts
        bench.samples = samples
        let r = try bench.run { endpoint in
            // The source runs with the test key (TestKeys): authenticated handshakes, as deployed.
            try DestinationClient(source: endpoint, clientName: "pager-bench flood", authentication: TestKeys.authentication).close()
        }
        print("""
        flood: a destination's handshake (demand and push connections) on loopback, median of \(samples); \(connections) idle connections from \(hosts) hosts
          no flood                            \(formatMicros(r.quietMedian))
          flood held open                     \(formatMicros(r.heldMedian))  ratio \(String(format: 2, r.heldRatio))
          flood re-opening what is evicted    \(formatMicros(r.reopeningMedian))  ratio \(String(format: 2, r.reopeningRatio))  (re-opened \(r.reopened))
          \(r.retries) handshake(s) retried after an eviction; source: \(r.sourceHandshakes)
        """)
    }
}

/// Compares two builds by alternating runs: this machine drifts over minutes, so a run before
/// a change and a run after it prove nothing.
struct AB: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ab",
        abstract: "Compare two builds: alternate `postcopy --json` runs of each and print medians.",
        discussion: "Example: pager-bench ab /tmp/before /tmp/after --rounds 5 (each a directory holding a release build, e.g. a copy of .build/release with symlinks resolved: cp -rL)."
    )
    @Argument(help: "Directory of build A.") var a: String
    @Argument(help: "Directory of build B.") var b: String
    @Option var rounds = 5
    @Option(name: .customLong("size-mib")) var sizeMiB = 1024

    func run() throws {
        let keys = ["full_transfer_seconds", "idle_p50_vs_round_trip_plus_local_fault", "pushing_p99_vs_idle_p50"]
        var results: [String: [String: [Double]]] = ["A": [:], "B": [:]]
        for round in 1...rounds {
            for (name, dir) in [("A", a), ("B", b)] {
                let (status, output) = try runProgram(dir + "/pager-bench", ["postcopy", "--json", "--size-mib", "\(sizeMiB)"])
                guard status == 0 else { throw ValidationError("\(dir)/pager-bench failed: \(output)") }
                var line: [String] = []
                for key in keys {
                    let value = jsonNumber(output, key) ?? .nan
                    results[name]![key, default: []].append(value)
                    line.append("\(key)=\(String(format: 2, value))")
                }
                print("round \(round) \(name): " + line.joined(separator: " "))
            }
        }
        for key in keys {
            func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
            let ma = median(results["A"]![key]!), mb = median(results["B"]![key]!)
            print("median \(key): A \(String(format: 2, ma))  B \(String(format: 2, mb))  B/A \(String(format: 2, mb / ma))")
        }
    }

    /// The number after `"key":` in a JSON text (keys here are unique).
    func jsonNumber(_ text: String, _ key: String) -> Double? {
        guard let r = text.firstRange(of: "\"\(key)\":") else { return nil }
        let rest = text[r.upperBound...].prefix { "0123456789.eE+-".contains($0) }
        return Double(rest)
    }
}

struct RawServer: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "raw-server", abstract: "Baseline: raw TCP responder (used by postcopy).")
    @Option var listen: String
    func run() throws {
        guard let e = Endpoint(listen) else { throw ValidationError("--listen ADDR:PORT") }
        try RawTCP.serve(e)
    }
}

struct RawClient: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "raw-client", abstract: "Baseline: raw TCP round trips or a stream (used by postcopy).")
    @Option var connect: String
    @Option var count = 0
    @Option(name: .customLong("stream-mib")) var streamMiB = 0
    @Option(help: "Write the round-trip distribution (percentile and ns per line) to this file.") var cdfFile: String?
    @Flag(name: .customLong("protocol"), help: "Round trips through the pager's protocol instead: --connect is a pagerd source; urgent 4 KiB PAGE_REQUESTs for random pages of its first region, answered on the demand channel.") var protocol_ = false
    @Option(help: "With --protocol: the source's key file (keys.psk); without it the handshake is unauthenticated (a source with --insecure-no-auth).") var keyFile: String?
    func run() throws {
        guard let e = Endpoint(connect) else { throw ValidationError("--connect ADDR:PORT") }
        if count > 0 && protocol_ {
            let authentication: PeerAuthentication = try keyFile.map { .keys(try KeyRing(parsing: try readSecretFile($0))) } ?? .insecureNone
            let client = try DestinationClient(source: e, clientName: "pager-bench", authentication: authentication)
            defer { client.close() }
            let region = client.regions[0]
            var samples: [UInt64] = []
            samples.reserveCapacity(count)
            var x: UInt64 = 0x9E3779B97F4A7C15
            for i in 0..<count {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                let page = x % (region.length / 4096)
                let t0 = monotonicNanoseconds()
                try client.demand.send(.pageRequest(PageRequest(requestID: UInt32(i + 1), region: region.id, offset: page * 4096, length: 4096, flags: .urgent)))
                guard case .pageData = try client.demand.receive() else { throw HarnessError("expected PAGE_DATA") }
                samples.append(monotonicNanoseconds() - t0)
            }
            let s = LatencySummary(histogramOf: samples)
            print("protocol-rtt p50-ns=\(s.p50) p90-ns=\(s.p90) p99-ns=\(s.p99) p999-ns=\(s.p999) max-ns=\(s.max)")
            return
        }
        if count > 0 {
            let s = LatencySummary(histogramOf: try RawTCP.roundTrips(e, count: count))
            print("rtt p50-ns=\(s.p50) p90-ns=\(s.p90) p99-ns=\(s.p99) p999-ns=\(s.p999) max-ns=\(s.max)")
            if let cdfFile { try writeWholeFile(cdfFile, s.cdfText) }
        }
        if streamMiB > 0 {
            print("stream seconds=\(try RawTCP.stream(e, bytes: streamMiB << 20))")
        }
    }
}

/// Swift kernel layer vs. plain C: the cost of one userfaultfd fault resolved by UFFDIO_COPY
/// from a handler thread, both measured in this run, interleaved round by round.
struct FaultLocal: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fault-local",
        abstract: "Local userfaultfd fault latency: Swift kernel layer vs. the same loop in C, same run."
    )

    @Option(help: "Pages (faults) per round.") var pages = 20_000
    @Option(help: "Rounds; Swift and C alternate, and the medians of the rounds are compared.") var rounds = 5
    @Option(help: "CPU of the touching thread.") var touchCPU = 0
    @Option(help: "CPU of the handler thread (same as --touch-cpu: both share one vCPU).") var handlerCPU = 0

    func run() throws {
        print("fault-local: \(pages) faults per round, \(rounds) rounds, touch on CPU \(touchCPU), handler on CPU \(handlerCPU)")
        var swiftRounds: [LatencySummary] = []
        var cRounds: [LatencySummary] = []
        for round in 1...rounds {
            let c = try LocalFaultBenchmark.runC(pages: pages, touchCPU: touchCPU, handlerCPU: handlerCPU)
            let s = LatencySummary(histogramOf: try LocalFaultBenchmark.run(pages: pages, touchCPU: touchCPU, handlerCPU: handlerCPU))
            print("  round \(round): C \(c)   Swift \(s)")
            cRounds.append(c)
            swiftRounds.append(s)
        }
        func median(_ xs: [UInt64]) -> UInt64 { xs.sorted()[xs.count / 2] }
        let cP50 = median(cRounds.map(\.p50)), sP50 = median(swiftRounds.map(\.p50))
        let cP99 = median(cRounds.map(\.p99)), sP99 = median(swiftRounds.map(\.p99))
        let ratio = Double(sP50) / Double(cP50)
        print("median of rounds: C p50 \(formatMicros(cP50)) p99 \(formatMicros(cP99)) | Swift p50 \(formatMicros(sP50)) p99 \(formatMicros(sP99))")
        print("ratio Swift/C at the median: \(String(format: 2, ratio)) (target <= 1.10)")
    }
}

/// Dirty tracking and the pre-copy switch.
struct Dirty: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Scan-and-reprotect cost per GiB (0/1/10/100% written), first-write cost, and the pause at the switch with and without pre-copy.",
        discussion: """
        The scan figures track 1 GiB of this process's populated memory with a WP_ASYNC
        userfaultfd and time one PAGEMAP_SCAN pass (written pages reported and re-protected);
        medians of 5. The pause figures migrate a live region between two network namespaces
        twice in the same run, with pre-copy rounds and without (--no-precopy: the writer is
        stopped before anything is sent), and check every page both times. Needs root.
        """
    )
    @Option(name: .customLong("size-mib"), help: "Size of the live region migrated for the pause figures.") var sizeMiB = 1024
    @Option(help: "Pages the live workload writes per second.") var pagesPerSecond = 20_000
    @Flag(help: "Print one JSON object instead of the table.") var json = false

    func run() throws {
        func say(_ s: String) { if !json { print("  ... \(s)"); fflushStandardOutput() } }
        say("scan-and-reprotect of 1 GiB at 0%, 1%, 10% and 100% written")
        let scans = try DirtyBenchmark.scanCosts()
        say("first write to a write-protected page")
        let writes = try DirtyBenchmark.firstWriteCost()
        var pauses: [(String, LiveMigration.Outcome)] = []
        for (name, flags) in [("pre-copy", ["--downtime-ms", "2"]), ("post-copy only", ["--no-precopy"])] {
            say("live migration of \(sizeMiB) MiB, \(name)")
            let hosts = try TwoHosts(splitCPUs: true)
            let scratch = Scratch()
            var m = LiveMigration(binaries: executableDirectory())
            m.sizeMiB = sizeMiB
            m.pagesPerSecond = pagesPerSecond
            m.sourceFlags = flags
            let outcome = try m.run(hosts: hosts, scratch: scratch)
            guard outcome.workloadStatus == 0, outcome.workload.contains("workload: ok") else {
                throw HarnessError("\(name): the destination's check failed:\n\(outcome.workload)\n\(outcome.dest)\n\(outcome.source)")
            }
            pauses.append((name, outcome))
        }
        let pre = pauses[0].1, post = pauses[1].1
        let touchPre = keyValues(pre.workload), touchPost = keyValues(post.workload)
        if json {
            let scanJSON = scans.map { "{\"written_fraction\":\($0.writtenFraction),\"pages_reported\":\($0.pagesReported),\"ms_per_gib\":\($0.millisecondsPerGiB)}" }
            print("""
            {"scenario":"dirty","scan":[\(scanJSON.joined(separator: ","))],\
            "first_write_ns":{"protected":\(writes.protected),"unprotected":\(writes.unprotected)},\
            "switch":{"region_bytes":\(sizeMiB << 20),"precopy":{"rounds":\(pre.rounds.count),"final_dirty_pages":\(pre.finalDirtySet ?? -1),\
            "pause_ms":\(pre.pauseMilliseconds ?? -1),"touch_seconds":\(touchPre["touch-seconds"] ?? -1),"faults":\(Int(touchPre["waits"] ?? -1))},\
            "postcopy_only":{"pause_ms":\(post.pauseMilliseconds ?? -1),"touch_seconds":\(touchPost["touch-seconds"] ?? -1),"faults":\(Int(touchPost["waits"] ?? -1))}}}
            """)
            return
        }
        func f(_ x: Double, _ digits: Int = 3) -> String { String(format: digits, x) }
        print("\ndirty-page tracking (WP_ASYNC + PAGEMAP_SCAN), 1 GiB of populated anonymous memory, medians of 5")
        for s in scans {
            let label = "  scan + re-protect, \(f(s.writtenFraction * 100, 0))% written (\(s.pagesReported) pages)"
            print(label + String(repeating: " ", count: max(1, 56 - label.count)) + "\(f(s.millisecondsPerGiB)) ms per GiB")
        }
        print("  first write to a protected page                       \(f(writes.protected, 0)) ns (unprotected: \(f(writes.unprotected, 0)) ns, ratio \(f(writes.protected / max(writes.unprotected, 1), 1)))")
        print("\nlive migration of \(sizeMiB) MiB written at \(pagesPerSecond) pages/s, two namespaces, every page checked")
        print("  pre-copy:       \(pre.rounds.count) rounds, final dirty set \(pre.finalDirtySet ?? -1) pages, workload paused \(f(pre.pauseMilliseconds ?? -1, 2)) ms; destination touched everything in \(f(touchPre["touch-seconds"] ?? -1, 2)) s with \(Int(touchPre["waits"] ?? -1)) faults")
        if let line = pre.source.split(separator: "\n").first(where: { $0.contains("stopping it") }),
           let open = line.lastIndex(of: "("), let close = line.lastIndex(of: ")") {
            print("                  pause = " + line[line.index(after: open)..<close])
        }
        print("  post-copy only: workload paused \(f(post.pauseMilliseconds ?? -1, 2)) ms; destination touched everything in \(f(touchPost["touch-seconds"] ?? -1, 2)) s with \(Int(touchPost["waits"] ?? -1)) faults")
    }
}

/// One QMP command (used by the native-postcopy baseline, which drives QEMU in a namespace).
struct QMPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "qmp", abstract: "Run one QMP command and print its top-level result fields as key=value lines.")
    @Option var socket: String
    @Option var execute: String
    @Option var arguments: String = "{}"
    func run() throws {
        let qmp = try QMP(path: socket)
        let r = try qmp.execute(execute, arguments)
        if case .object(let fields) = r {
            for (k, v) in fields { print("\(k)=\(describe(v))") }
        } else {
            print(describe(r))
        }
    }
}

/// The QEMU comparison: the same guest migrated with the pager and with QEMU's postcopy.
struct QEMUCompare: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qemu",
        abstract: "Migrate a QEMU guest between two namespaces with the pager and with QEMU's native postcopy, side by side.",
        discussion: """
        Builds the test guest (Deploy/qemu/make-guest.sh; installs what it needs) unless --guest
        names one. Each method: the guest boots and verifies its memory in the source namespace,
        is migrated, and must complete verification passes in the destination namespace after
        all RAM is local. Methods: pager (post-copy only), pager-precopy (pre-copy rounds with
        the source QEMU's writes tracked by the preload library, then post-copy), and QEMU's
        native postcopy. Prints total migration time (pager-precopy: from its first round), the
        guest's longest stall as its own clock saw it, and fault latency (pager) or blocktime
        (QEMU). Needs root.
        """
    )
    @Option(help: "Directory with vmlinuz and initrd.gz (default: build one).") var guest: String?
    @Option(name: .customLong("ram-mib"), help: "Guest RAM.") var ramMiB = 384
    @Option(name: .customLong("workload-mib"), help: "Memory the guest workload fills and checks.") var workloadMiB = 192

    func run() throws {
        let scratch = Scratch()
        let dir = guest ?? scratch.file("guest")
        if guest == nil {
            guard let script = guestBuilderScript(binaries: executableDirectory()) else {
                throw ValidationError("Deploy/qemu/make-guest.sh not found next to this build: give --guest DIR")
            }
            try sh("/bin/bash", script, dir, "\(workloadMiB)")
        }
        var rows: [(String, QEMUMigrationRun.Outcome)] = []
        for method in QEMUMigrationRun.Method.allCases {
            print("  ... \(method.rawValue)")
            fflushStandardOutput()
            let hosts = try TwoHosts(splitCPUs: true)
            let runScratch = Scratch()
            var m = QEMUMigrationRun(binaries: executableDirectory(), guest: dir)
            m.ramMiB = ramMiB
            m.method = method
            let o = try m.run(hosts: hosts, scratch: runScratch)
            guard !o.mismatch else { throw HarnessError("\(method.rawValue): the guest found wrong memory") }
            rows.append((method.rawValue, o))
        }
        print("\nQEMU \(ramMiB) MiB guest, workload on \(workloadMiB) MiB, TCG, two namespaces (one vCPU each); guest checked its memory after the move")
        for (name, o) in rows {
            print("  \(name)".padded(18) + "total \(String(format: 3, o.totalSeconds)) s   guest's longest stall \(o.guestPauseMilliseconds) ms   \(o.faultSummary)")
        }
    }
}

extension String {
    func padded(_ n: Int) -> String { self + String(repeating: " ", count: max(1, n - count)) }
}
