import Glibc
import PagerHandoff
import PagerHarness
import PagerKernel
import PagerOperations
import Testing

/// The operator's view of a real migration between two namespaces: `pagerd status` on both
/// daemons' control sockets while it runs, their `/metrics` scraped and checked by
/// Prometheus's own `promtool`, and at the end the status, the metrics and the destination's
/// summary agreeing.
@Suite("Operations: live status and Prometheus metrics", .serialized,
       .enabled(if: isRoot, "needs root for network namespaces and userfaultfd"),
       .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)),
       .enabled(if: access("/usr/bin/promtool", X_OK) == 0 && access("/usr/bin/curl", X_OK) == 0,
                "needs promtool (Debian's prometheus package) and curl: Deploy/setup.sh installs them"))
struct OperationsTests {
    static let destMetrics = "http://\(TwoHosts.destAddress):9560/metrics"
    static let sourceMetrics = "http://\(TwoHosts.sourceAddress):9560/metrics"

    struct Sample {
        var milliseconds: Double
        var status: String
        var pagesLocal: Int
    }

    @Test("while 256 MiB migrate, each daemon's status answers at once with moving numbers and /metrics passes promtool check metrics; at the end the last status and the metrics equal the destination's summary")
    func statusAndMetrics() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        let destControl = scratch.file("dest.control"), sourceControl = scratch.file("source.control")
        var m = Migration(sizeMiB: 256, backing: "anon", access: "random")
        m.once = false
        m.destExtra = ["--control-socket", destControl, "--metrics-listen", "\(TwoHosts.destAddress):9560", "--metrics-label", "domain=vm1",
                       "--reconnect-timeout-s", "30"]
        m.sourceExtra = ["--control-socket", sourceControl, "--metrics-listen", "\(TwoHosts.sourceAddress):9560"]
        var samples: [Sample] = []
        var sourceSessions: [JSONValue] = []
        var scrapeDuring = ""
        var final: JSONValue?
        var finalMetrics = "", sourceFinalMetrics = "", humanText = ""
        let outcome = try m.run(hosts: hosts, scratch: scratch, shape: "200mbit", disrupt: { _ in
            let deadline = monotonicNanoseconds() + 60_000_000_000
            while monotonicNanoseconds() < deadline {
                let started = monotonicNanoseconds()
                let answer = try ControlClient.request("status", path: destControl)
                let took = Double(monotonicNanoseconds() - started) / 1e6
                let doc = try JSONReader.parse(Array(answer.utf8), limits: .status)
                guard case .array(let migrations)? = doc["migrations"], let mig = migrations.first else { continue }
                let sample = Sample(milliseconds: took, status: mig["status"]?.stringValue ?? "", pagesLocal: Int(mig["pages-local"]?.uint64 ?? 0))
                samples.append(sample)
                if sample.status == "completed" || sample.status == "failed" { break }
                if samples.count == 3 {
                    scrapeDuring = try hosts.run(in: hosts.dest, "/usr/bin/curl", ["-sf", OperationsTests.destMetrics])
                    let source = try JSONReader.parse(Array(try ControlClient.request("status", path: sourceControl).utf8), limits: .status)
                    if case .array(let s)? = source["sessions"] { sourceSessions = s }
                }
                sleepMilliseconds(250)
            }
        }, afterWorkload: { dest, _ in
            try waitFor(dest, toPrint: "outages  ", seconds: 30)
            final = try JSONReader.parse(Array(try ControlClient.request("status", path: destControl).utf8), limits: .status)
            finalMetrics = try hosts.run(in: hosts.dest, "/usr/bin/curl", ["-sf", OperationsTests.destMetrics])
            sourceFinalMetrics = try hosts.run(in: hosts.source, "/usr/bin/curl", ["-sf", OperationsTests.sourceMetrics])
            humanText = try runProgram(Binaries.pagerd, ["status", destControl]).1
        })
        #expect(outcome.workloadStatus == 0 && outcome.workload.contains("mismatches=0"), "\(outcome.workload)")
        print("status answers (ms): \(samples.map { String(format: 1, $0.milliseconds) }.joined(separator: " "))")
        print("pages local as seen: \(samples.map { "\($0.pagesLocal)" }.joined(separator: " "))")

        // Live: several answers while the migration ran, each at once, the numbers moving.
        let running = samples.filter { $0.status == "postcopy-active" }
        #expect(running.count >= 3, "\(samples.map(\.status))")
        let sorted = samples.map(\.milliseconds).sorted()
        #expect(!sorted.isEmpty && sorted[sorted.count * 9 / 10] < 100, "status answers within 100 ms: \(sorted)")
        #expect((running.last?.pagesLocal ?? 0) > (running.first?.pagesLocal ?? 0), "pages local moved: \(running.map(\.pagesLocal))")
        #expect(sourceSessions.count == 1 && sourceSessions.first?["status"]?.stringValue == "active", "\(sourceSessions)")
        try expectPromtoolPasses(scrapeDuring, "the destination's metrics during the migration", scratch)
        #expect((Self.value(of: "pager_dest_pages_remaining", in: scrapeDuring) ?? 0) > 0, "pages remained during: \(scrapeDuring)")

        // The end: the last status, the metrics and the summary say the same.
        let mig: JSONValue? = { if case .array(let a)? = final?["migrations"] { return a.first } else { return nil } }()
        let summary = Self.summary(outcome.dest)
        #expect(mig?["status"]?.stringValue == "completed", "\(String(describing: final))")
        #expect(mig?["ram"]?["remaining"]?.uint64 == 0 && mig?["pages-local"]?.uint64 == 65536, "\(String(describing: mig))")
        #expect(summary.faults > 0 && mig?["faults"]?.uint64 == UInt64(summary.faults), "summary \(summary), status \(String(describing: mig))")
        #expect(mig?["ram"]?["postcopy-requests"]?.uint64 == UInt64(summary.demand), "\(summary)")
        #expect(mig?["ram"]?["normal"]?.uint64 == UInt64(summary.installed) && mig?["ram"]?["duplicate"]?.uint64 == UInt64(summary.zero), "\(summary)")
        try expectPromtoolPasses(finalMetrics, "the destination's metrics at the end", scratch)
        try expectPromtoolPasses(sourceFinalMetrics, "the source's metrics at the end", scratch)
        #expect(Self.value(of: "pager_dest_faults_total", in: finalMetrics) == Double(summary.faults), "\(finalMetrics)")
        #expect(Self.value(of: "pager_dest_pages_remaining", in: finalMetrics) == 0, "\(finalMetrics)")
        #expect(Self.value(of: "pager_dest_pages_installed_total{role=\"dest\",domain=\"vm1\",region=\"vm-anon-random.ram\",how=\"data\"}", in: finalMetrics) == Double(summary.installed), "\(finalMetrics)")
        #expect(Self.value(of: "pager_dest_migrations_total{role=\"dest\",domain=\"vm1\",region=\"vm-anon-random.ram\",outcome=\"completed\"}", in: finalMetrics) == 1, "\(finalMetrics)")
        #expect(Self.value(of: "pager_source_sessions_total", in: sourceFinalMetrics) == 1, "\(sourceFinalMetrics)")
        #expect(humanText.contains("migration 1: completed") && humanText.contains("100.0% local"), "\(humanText)")
    }

    /// `promtool check metrics` (it reads the exposition on standard input) passes.
    func expectPromtoolPasses(_ metrics: String, _ what: String, _ scratch: Scratch) throws {
        let file = scratch.file("scrape.prom")
        try writeWholeFile(file, metrics)
        let (status, output) = try runProgram("/bin/sh", ["-c", "/usr/bin/promtool check metrics < \(file)"])
        #expect(status == 0 && !metrics.isEmpty, "\(what): promtool: \(output)\n\(metrics)")
    }

    /// The value of the first series whose line starts with `series` (a name, or a name with
    /// its labels).
    static func value(of series: String, in metrics: String) -> Double? {
        for line in metrics.split(separator: "\n") where line.hasPrefix(series) && !line.hasPrefix("#") {
            let rest = line.dropFirst(series.count)
            guard rest.first == " " || rest.first == "{" || series.hasSuffix("}") else { continue }
            return line.split(separator: " ").last.flatMap { Double($0) }
        }
        return nil
    }

    /// The destination summary's counts: `faults N`, `requests N demand`, `pages installed
    /// N with data, M zero`.
    static func summary(_ dest: String) -> (faults: Int, demand: Int, installed: Int, zero: Int) {
        let pages = numbers(after: "pages installed", in: dest)
        return (numbers(after: "faults", in: dest).first ?? -1, numbers(after: "requests", in: dest).first ?? -1, pages.first ?? -1,
                pages.count > 1 ? pages[1] : -1)
    }
}
