import ArgumentParser
import PagerKernel
import PagerWorkloads

/// Test and benchmark workload for pagerd: fills source files with a known pattern, and runs
/// a process whose memory is paged in by `pagerd dest` and checked page by page.
@main
struct PagerWorkload: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pager-workload",
        abstract: "A workload for testing pagerd: fill a source file, or run with lazily migrated memory.",
        subcommands: [Fill.self, Run.self, Live.self, Digest.self]
    )

    struct Fill: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write the test pattern into a file (with holes).")
        @Option var file: String
        @Option(name: .customLong("size-mib")) var sizeMiB: Int
        @Option var seed: UInt64 = 1
        @Option(help: "Where holes and zero pages go: standard (every 16th page a hole, every 16th zero), dense (all data), holes-every-7.")
        var layout: String = "standard"
        func run() throws {
            guard let layout = MigrationPattern.Layout(rawValue: layout) else { throw ValidationError("unknown layout \(self.layout)") }
            try MigrationPattern.fill(path: file, bytes: sizeMiB << 20, seed: seed, layout: layout)
            print("filled \(file): \(sizeMiB) MiB, seed \(seed)")
        }
    }

    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Hand this process's memory to pagerd dest, touch it, verify it.")
        @Option(help: "pagerd dest's --uffd-socket.") var socket: String
        @Option(name: .customLong("size-mib")) var sizeMiB: Int
        @Option(help: "anon, shm or hugetlb.") var backing: String = "anon"
        @Option(help: "sequential, random, strided, working-set, or none (wait for the full transfer).") var access: String = "random"
        @Option(help: "Write the wait-latency distribution (percentile and ns per line) to this file.") var cdfFile: String?
        @Option(help: "Touch (and verify) only this many pages, in access order.") var touchPages: Int?
        @Option var seed: UInt64 = 1
        @Option(help: "Write to every N-th page touched (0: none).") var writeEvery = 13
        @Option(name: .customLong("hint-mib"), help: "Hint the pager to prefetch the first N MiB and wait until they are local, before touching.") var hintMiB = 0
        @Option(help: "Shared memory: punch a hole at every N-th page after touching (0: none).") var punchEvery = 0
        @Option(help: "Drop every N-th page with MADV_DONTNEED, half before and half after touching (anon only; 0: none).") var discardEvery = 0
        @Flag(help: "Tests only: send a handoff the pager must refuse (no offset, no page_size), then touch the memory anyway.") var malformedHandoff = false
        @Flag(help: "Tests only, with --access none: once the pager closes the handoff connection, print how many pages are present (and whether they hold the pattern), poisoned, or neither, before reading the rest.") var reportResidency = false
        @Option(help: "Check every page against these digests (from `pager-workload digest`) instead of the fill pattern.") var expectDigests: String?
        @Option(help: "The source file's layout, as given to fill (standard, dense, holes-every-7).") var layout: String = "standard"

        func run() throws {
            guard let l = MigrationPattern.Layout(rawValue: layout) else { throw ValidationError("--layout: standard, dense or holes-every-7") }
            guard let b = MigrationWorkload.Backing(rawValue: backing) else { throw ValidationError("--backing: anon, shm or hugetlb") }
            guard let a = MigrationWorkload.Access(rawValue: access) else { throw ValidationError("--access: sequential, random, strided, working-set or none") }
            var w = MigrationWorkload(bytes: sizeMiB << 20, backing: b, access: a, seed: seed, writeEvery: writeEvery, touchPages: touchPages)
            w.discardEvery = discardEvery
            w.layout = l
            w.hintBytes = hintMiB << 20
            w.punchEvery = punchEvery
            w.malformedHandoff = malformedHandoff
            w.expectedDigests = try expectDigests.map { try PageDigest.load(from: $0) }
            if reportResidency {
                w.onPagerGone = { r in
                    // Printed and flushed now: reading the rest may end this process with SIGBUS.
                    print("workload: the pager is gone: present=\(r.present) present-mismatches=\(r.mismatches) poisoned=\(r.poisoned) absent=\(r.absent)")
                    fflushStandardOutput()
                }
            }
            let r = try w.run(socketPath: socket)
            print("workload: \(r.mismatches == 0 ? "ok" : "CORRUPT") pages=\(r.pages) backing=\(backing) access=\(access) mismatches=\(r.mismatches) touch-seconds=\(r.seconds) waits=\(r.waits.count) wait-p50-ns=\(r.waits.p50) wait-p90-ns=\(r.waits.p90) wait-p99-ns=\(r.waits.p99) wait-p999-ns=\(r.waits.p999) wait-max-ns=\(r.waits.max)")
            if let first = r.firstMismatch { print("first mismatch: \(first)") }
            if let cdfFile {
                try writeWholeFile(cdfFile, r.waits.cdfText)
            }
            if r.mismatches != 0 { throw ExitCode(1) }
        }
    }

    struct Live: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Hand live memory to pagerd source --live-socket, then keep writing to it until stopped.")
        @Option(help: "pagerd source's --live-socket.") var socket: String
        @Option(name: .customLong("size-mib")) var sizeMiB: Int
        @Option var seed: UInt64 = 1
        @Option(help: "Pages written per second.") var pagesPerSecond = 20_000
        @Option(help: "Write only within the first N pages (a hot set that never converges).") var hotPages: Int?
        func run() throws {
            let w = WritingWorkload(bytes: sizeMiB << 20, seed: seed, pagesPerSecond: pagesPerSecond, hotPages: hotPages)
            try w.run(socketPath: socket) { print($0); fflushStandardOutput() }
        }
    }

    struct Digest: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write the digest of every page of a (stopped) process's memory to a file.")
        @Option var pid: Int32
        @Option(help: "Address of the memory in that process.") var address: UInt64
        @Option(name: .customLong("size-mib")) var sizeMiB: Int
        @Option var out: String
        func run() throws {
            let d = try PageDigest.ofProcess(pid, address: address, bytes: sizeMiB << 20)
            try PageDigest.save(d, to: out)
            print("digests of \(d.count) pages of process \(pid) written to \(out)")
        }
    }
}
