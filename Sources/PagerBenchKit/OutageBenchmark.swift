import PagerHarness
import PagerKernel
import PagerReport

/// What the daemons' logs say about the outages of one migration (the destination's
/// `session resumed after` lines, the source's `lost in flight` lines).
public struct OutageLog: Equatable, Sendable {
    /// Per resume: milliseconds from the loss to the resume.
    public var pausesMilliseconds: [Double] = []
    /// Per resume: how long the longest-waiting fault had waited, in milliseconds.
    public var faultWaitsMilliseconds: [Double] = []
    /// Per resume: pages faults waited on, asked for again at once.
    public var faultsAskedAgain: [Int] = []
    /// Per resume: pages in flight on the lost connections, back to missing (left to the push).
    public var pagesInFlight: [Int] = []
    /// Per resume: KiB the source had sent that never arrived, sent again.
    public var resentKiB: [Int] = []

    public init(dest: String, source: String) {
        for line in dest.split(separator: "\n") where line.contains("session resumed after ") {
            let words = line.split(separator: " ")
            func number(after word: String) -> Double? {
                words.firstIndex(of: Substring(word)).flatMap { $0 + 1 < words.count ? Double(words[$0 + 1]) : nil }
            }
            if let ms = number(after: "after") { pausesMilliseconds.append(ms) }
            if let ms = number(after: "waited") { faultWaitsMilliseconds.append(ms) }
            // "...; 3 waiting faults asked for again; 176 pages in flight back to missing, ..."
            func count(before phrase: [Substring]) -> Int? {
                guard words.count > phrase.count else { return nil }
                for i in 1...(words.count - phrase.count) where Array(words[i..<i + phrase.count]) == phrase { return Int(words[i - 1]) }
                return nil
            }
            if let n = count(before: ["waiting", "faults"]) { faultsAskedAgain.append(n) }
            if let n = count(before: ["pages", "in", "flight"]) { pagesInFlight.append(n) }
        }
        for line in source.split(separator: "\n") where line.contains("lost in flight") {
            // "...; 111 pages (444 KiB) sent before were lost in flight; ..."
            let words = line.split(separator: " ")
            if let i = words.firstIndex(of: "KiB)"), i > 0, let n = Int(words[i - 1].trimmingPrefix("(")) { resentKiB.append(n) }
        }
    }
}

extension SuiteRun {
    /// Both connections reset (`ss -K`) five times during a full transfer, against the same
    /// transfer without: the pause of each resume next to the raw round trip, how long a
    /// fault waited, what was asked for and sent again. The link is shaped so that a transfer
    /// lasts about 2 s (unless `--link` shaped it already): the resets must land inside it.
    func outageScenario(resets: Int = 5) throws {
        guard let hosts else {
            report.notes.append("outages: not run on loopback (the resets need the two namespaces: ss -K there would hit other connections)")
            advance("outages: skipped on loopback")
            advance("outages: skipped on loopback")
            return
        }
        let shaped = report.link == nil
        let rate = "\(max(100, sizeMiB * 4))mbit"
        if shaped { try hosts.shapeSource(rate: rate) }
        defer { if shaped { try? hosts.unshapeSource() } }
        // With the same push and access as the reset run, so that only the outages differ.
        let args = ["--access", "random"]
        advance("pager: full transfer with no outage (the baseline)")
        let (clean, _) = try migrate("outage-none", destFlags: [], workloadArgs: args)
        advance("pager: full transfer, both connections reset \(resets) times")
        var injected = 0
        let (kv, _) = try migrate("outage-resets", destFlags: [], workloadArgs: args) { dest in
            try waitFor(dest, toPrint: "session ", seconds: 30)
            for i in 1...resets {
                sleepMilliseconds(200)
                if dest.output.contains("pages (") || dest.wait(timeoutMilliseconds: 0) != nil { break } // the transfer is over
                _ = try hosts.run(in: hosts.source, "/usr/bin/ss", ["-K", "dst", TwoHosts.destAddress])
                do { try waitFor(dest, toPrint: "session resumed after", seconds: 30, occurrence: i) } catch {
                    // The transfer ended just before this reset: nothing was left to cut.
                    if dest.output.contains("pages (") || dest.wait(timeoutMilliseconds: 0) != nil { break }
                    throw error
                }
                injected = i
            }
        }
        let log = OutageLog(dest: (try? readWholeFile(scratch.file("dest-outage-resets.log"))) ?? "",
                            source: (try? readWholeFile(scratch.file("source-outage-resets.log"))) ?? "")
        guard injected > 0, !log.pausesMilliseconds.isEmpty, let seconds = kv["touch-seconds"], let cleanSeconds = clean["touch-seconds"] else {
            report.notes.append("outages: the transfer ended before a reset could land (try a larger --size-mib)")
            return
        }
        if shaped { report.notes.append("outages: both transfers ran on the source's link shaped to \(rate) (tc tbf), so that the resets land inside them") }
        func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
        func mean(_ xs: [Int]) -> Double { xs.isEmpty ? 0 : Double(xs.reduce(0, +)) / Double(xs.count) }
        let pause = median(log.pausesMilliseconds)
        let rttMilliseconds = rtt.map { Double($0.p50) / 1e6 }
        report.figures.append(Figure(key: "outage_resume_p50_ms", label: "resume after a reset, median of \(log.pausesMilliseconds.count)",
                                     value: pause, unit: "ms", baseline: rttMilliseconds == nil ? nil : "raw TCP round trip p50",
                                     ratio: rttMilliseconds.map { pause / $0 }))
        report.figures.append(Figure(key: "outage_resume_max_ms", label: "resume after a reset, longest", value: log.pausesMilliseconds.max()!, unit: "ms"))
        report.figures.append(Figure(key: "outage_fault_wait_max_ms", label: "longest fault wait across a reset",
                                     value: log.faultWaitsMilliseconds.max() ?? 0, unit: "ms", baseline: "resume median", ratio: (log.faultWaitsMilliseconds.max() ?? 0) / max(pause, 1e-3)))
        report.figures.append(Figure(key: "outage_faults_asked_again_mean", label: "waiting faults asked for again per reset", value: mean(log.faultsAskedAgain), unit: "pages"))
        report.figures.append(Figure(key: "outage_pages_in_flight_mean", label: "pages in flight per reset (requested or pushed), back to missing", value: mean(log.pagesInFlight), unit: "pages"))
        report.figures.append(Figure(key: "outage_resent_kib_mean", label: "pushed data lost in flight per reset, sent again", value: mean(log.resentKiB), unit: "KiB"))
        report.figures.append(Figure(key: "outage_transfer_s", label: "full transfer with \(injected) resets", value: seconds, unit: "s",
                                     baseline: "the same transfer without", ratio: seconds / cleanSeconds))
    }
}
