import PagerHarness
import PagerKernel
import PagerReport

extension SuiteRun {
    /// Scattered holes against none: the same region size with every page data ("dense") and
    /// with every 7th page a hole ("holes-every-7", the file never written there), moved with
    /// no access and with random access, in `rounds` interleaved rounds (the order alternates);
    /// the medians are compared. Holes carry no bytes, so they must cost less than data.
    func holeScenario(rounds: Int) throws {
        let layouts = ["dense", "holes-every-7"]
        var files: [String: String] = [:]
        for layout in layouts {
            let file = scratch.file("\(layout).ram")
            try sh(workload, "fill", "--file", file, "--size-mib", "\(sizeMiB)", "--seed", "9", "--layout", layout)
            files[layout] = file
        }
        var seconds: [String: [Double]] = [:]
        for round in 0..<rounds {
            for access in ["none", "random"] {
                for i in 0..<layouts.count {
                    let layout = layouts[(i + round) % layouts.count]
                    advance("pager: \(layout), access \(access) (round \(round + 1) of \(rounds))")
                    let m = try migration("holes-\(layout)-\(access)-\(round)", destFlags: [],
                                          workloadArgs: ["--access", access, "--layout", layout], region: files[layout]!)
                    guard let s = m.workload["touch-seconds"], Int(m.workload["pages"] ?? 0) * basePageSize == sizeMiB << 20 else {
                        throw HarnessError("\(layout) transfer (\(access)) did not verify the whole region: \(m.workload)")
                    }
                    seconds["\(layout) \(access)", default: []].append(s)
                }
            }
        }
        func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
        for access in ["none", "random"] {
            let dense = median(seconds["dense \(access)"]!), holes = median(seconds["holes-every-7 \(access)"]!)
            report.figures.append(Figure(key: "dense_\(access)_s", label: "every page data, access \(access) (median)", value: dense, unit: "s"))
            report.figures.append(Figure(key: "holes7_\(access)_s", label: "every 7th page a hole, access \(access) (median)", value: holes, unit: "s",
                                         baseline: "every page data", ratio: holes / dense))
            let all = seconds["dense \(access)"]!.map { BenchReport.number($0, 3) }.joined(separator: ", ")
            let holed = seconds["holes-every-7 \(access)"]!.map { BenchReport.number($0, 3) }.joined(separator: ", ")
            report.notes.append("holes, access \(access): every page data \(all) s; every 7th page a hole \(holed) s")
        }
    }
}
