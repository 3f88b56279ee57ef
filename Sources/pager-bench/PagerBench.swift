import ArgumentParser
import PagerBenchKit
import PagerKernel

@main
struct PagerBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pager-bench",
        abstract: "Measures the pager against baselines taken in the same run, and prints ratios.",
        subcommands: [FaultLocal.self]
    )
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
            let s = LatencySummary(samples: try LocalFaultBenchmark.run(pages: pages, touchCPU: touchCPU, handlerCPU: handlerCPU))
            print("  round \(round): C \(c)   Swift \(s)")
            cRounds.append(c)
            swiftRounds.append(s)
        }
        func median(_ xs: [UInt64]) -> UInt64 { xs.sorted()[xs.count / 2] }
        let cP50 = median(cRounds.map(\.p50)), sP50 = median(swiftRounds.map(\.p50))
        let cP99 = median(cRounds.map(\.p99)), sP99 = median(swiftRounds.map(\.p99))
        let ratio = Double(sP50) / Double(cP50)
        print("median of rounds: C p50 \(formatMicros(cP50)) p99 \(formatMicros(cP99)) | Swift p50 \(formatMicros(sP50)) p99 \(formatMicros(sP99))")
        print("ratio Swift/C at the median: \(String(format2: ratio)) (target <= 1.10)")
    }
}

extension String {
    init(format2 value: Double) {
        let hundredths = Int((value * 100).rounded())
        self = "\(hundredths / 100).\(String(repeating: "0", count: hundredths % 100 < 10 ? 1 : 0))\(hundredths % 100)"
    }
}
