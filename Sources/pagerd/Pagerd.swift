import ArgumentParser
import Logging
import PagerBenchKit
import PagerKernel

@main
struct Pagerd: ParsableCommand {
    static func main() {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            exit(withError: error)
        }
    }

    static let configuration = CommandConfiguration(
        commandName: "pagerd",
        abstract: "Remote pager for post-copy memory migration.",
        discussion: """
        pagerd resolves userfaultfd page faults on a destination host by fetching the pages
        from a source host, while the rest of the memory streams in the background.
        """,
        subcommands: [SourceCommand.self, DestCommand.self, QEMUSourceCommand.self, QEMUDestCommand.self, Demo.self]
    )
}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Migrate a real memory region lazily on this machine and verify every page.",
        discussion: """
        Runs a source (`pagerd source` serving a file with known content), a destination
        (`pagerd dest`) and a workload as three processes on loopback. The workload hands its
        empty memory to the destination in Firecracker's format, then reads and writes it in
        random order while pages arrive on demand and in the background, and checks every
        byte at the end. Prints what each process did. Needs root (userfaultfd).

        With --in-process, the same happens inside one process without the network: a test
        of the kernel layer and the page bookkeeping alone.
        """
    )

    @Option(name: .customLong("size-mib"), help: "Size of the migrated region in MiB.") var sizeMiB = 1024
    @Option(help: "Workload access order: sequential, random or strided.") var access = "random"
    @Flag(help: "Run source, pager and workload as threads of this process, without the network.") var inProcess = false
    @Option(help: "Seed of the in-process workload's random access order.") var seed: UInt64 = 1

    func run() throws {
        if !inProcess {
            let demo = ProcessDemo(sizeMiB: sizeMiB, access: access)
            let (ok, report) = try demo.run { print("pagerd demo: \($0)") }
            print("\n" + report)
            print(ok ? "pagerd demo: every page of the workload's memory is correct, its writes included" : "pagerd demo: FAILED")
            if !ok { throw ExitCode(1) }
            return
        }
        var logger = Logger(label: "pagerd.demo")
        logger.logLevel = .info
        let demo = LocalDemo(megabytes: sizeMiB, seed: seed)
        let report = try demo.run { logger.info("\($0)") }
        let mib = Double(report.pages * basePageSize) / Double(1 << 20)
        print("""

        pagerd demo: \(report.pages) pages (\(Int(mib)) MiB) migrated lazily in \(String(format: 1, report.seconds)) s
          fault events       \(report.faults) (userfaultfd PAGEFAULT messages handled)
          workload waits     \(report.waitingTouches.count) touches waited for a page: \(report.waitingTouches)
          pages installed    \(report.copiedPages) copied (UFFDIO_COPY), \(report.zeroPages) zero (UFFDIO_ZEROPAGE, no bytes copied)
          background push    \(report.pushedPages) pages
          verification       \(report.mismatches == 0 ? "every byte of every page matches" : "\(report.mismatches) WORDS DIFFER")
          workload writes    \(report.writesKept ? "kept (never overwritten by a later push)" : "LOST")
        """)
        if report.mismatches != 0 || !report.writesKept { throw ExitCode(1) }
    }
}
