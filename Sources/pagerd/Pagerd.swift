import ArgumentParser
import Logging
import PagerKernel

@main
struct Pagerd: ParsableCommand {
    static func main() {
        // Under systemd, stderr is the journal: lines carry syslog priorities instead of a
        // timestamp and level word (the journal records both itself).
        if standardErrorIsJournal {
            LoggingSystem.bootstrap { JournalLogHandler(label: $0) }
        } else {
            LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        }
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
        pagerd resolves userfaultfd page faults on a destination host by fetching the pages \
        from a source host, while the rest of the memory streams in the background.
        """,
        version: pagerdVersion,
        subcommands: [SourceCommand.self, DestCommand.self, QEMUSourceCommand.self, QEMUDestCommand.self, StatusCommand.self, Demo.self, KeygenCommand.self, GuardianCommand.self]
    )
}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Migrate a real memory region lazily on this machine and verify every page.",
        discussion: """
        Runs a source (`pagerd source` serving a file with known content), a destination \
        (`pagerd dest`) and a workload as three processes on loopback. The workload hands its \
        empty memory to the destination in Firecracker's format, then reads and writes it in \
        random order while pages arrive on demand and in the background, and checks every \
        byte at the end. Prints what each process did. Needs root (userfaultfd), and \
        pager-workload next to pagerd.
        """
    )

    @Option(name: .customLong("size-mib"), help: "Size of the migrated region in MiB.") var sizeMiB = 1024
    @Option(help: "Workload access order: sequential, random or strided.") var access = "random"

    func run() throws {
        // Only the real daemons: what the demo shows is what runs in production.
        let demo = ProcessDemo(sizeMiB: sizeMiB, access: access)
        let (ok, report) = try demo.run { print("pagerd demo: \($0)") }
        print("\n" + report)
        print(ok ? "pagerd demo: every page of the workload's memory is correct, its writes included" : "pagerd demo: FAILED")
        if !ok { throw ExitCode(1) }
    }
}

/// `pagerd --version`: the release and the wire protocol it speaks.
let pagerdVersion = "pagerd 0.5.0 (wire protocol v1)"
