import Glibc
import PagerBenchKit
import PagerKernel
import Testing

/// A live migration: a workload in the source namespace keeps writing its memory while
/// `pagerd source --live-socket` runs pre-copy rounds to `pagerd dest --precopy`; after the
/// switch, a workload in the destination namespace takes the memory over and compares every
/// page with the source workload's final memory (read while it is stopped).
struct LiveMigration {
    var sizeMiB = 1024
    var pagesPerSecond = 20_000
    var hotPages: Int?
    var sourceFlags: [String] = []

    struct Outcome {
        var workload: String
        var workloadStatus: Int32?
        var dest: String
        var source: String
    }

    func run(hosts: TwoHosts, scratch: Scratch) throws -> Outcome {
        let live = scratch.file("live.sock")
        let source = try hosts.spawn(in: hosts.source, Binaries.pagerd,
                                     ["source", "--listen", "\(TwoHosts.sourceAddress):7070", "--live-socket", live] + sourceFlags,
                                     log: scratch.file("source.log"))
        defer { source.signal(SIGKILL) }
        try waitFor(source, toPrint: "waiting for a workload")
        var writerArgs = ["live", "--socket", live, "--size-mib", "\(sizeMiB)", "--pages-per-second", "\(pagesPerSecond)"]
        if let hotPages { writerArgs += ["--hot-pages", "\(hotPages)"] }
        let writer = try hosts.spawn(in: hosts.source, Binaries.workload, writerArgs, log: scratch.file("writer.log"))
        defer { writer.signal(SIGKILL) }
        try waitFor(writer, toPrint: "live memory handed over", seconds: 60)
        try waitFor(source, toPrint: "serving 1 region")
        let socket = scratch.file("dest.sock")
        let dest = try hosts.spawn(in: hosts.dest, Binaries.pagerd,
                                   ["dest", "--connect", "\(TwoHosts.sourceAddress):7070", "--uffd-socket", socket, "--precopy"],
                                   log: scratch.file("dest.log"))
        defer { dest.signal(SIGKILL) }
        try waitFor(dest, toPrint: "waiting for the userfaultfd handoff", seconds: 120)
        // The source stopped the writer at the switch: its memory is final. Digest it.
        let base = keyValues(writer.output)["base"].map { UInt64($0) } ?? 0
        let digests = scratch.file("source.digests")
        try sh(Binaries.workload, "digest", "--pid", "\(writer.pid)", "--address", "\(base)", "--size-mib", "\(sizeMiB)", "--out", digests)
        let workload = try hosts.spawn(in: hosts.dest, Binaries.workload,
                                       ["run", "--socket", socket, "--size-mib", "\(sizeMiB)", "--access", "random",
                                        "--write-every", "13", "--expect-digests", digests],
                                       log: scratch.file("workload.log"))
        let w = workload.wait(timeoutMilliseconds: 180_000)
        dest.wait(timeoutMilliseconds: 30_000)
        source.signal(SIGTERM)
        source.wait(timeoutMilliseconds: 10_000)
        return Outcome(workload: workload.output, workloadStatus: w, dest: dest.output, source: source.output)
    }
}

@Suite("Pre-copy rounds, then post-copy, across two network namespaces", .serialized,
       .enabled(if: isRoot, "needs root for network namespaces and userfaultfd"),
       .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct PrecopyTests {
    /// Round lines of the source's report: (pages sent, pages written during the round).
    func rounds(_ source: String) -> [(sent: Int, dirty: Int)] {
        source.split(separator: "\n").filter { $0.contains("pre-copy round ") && $0.contains("pagerd source:") }.map { line in
            let words = line.split(separator: " ")
            let sent = words.firstIndex(of: "pages").map { Int(words[$0 - 1]) ?? -1 } ?? -1
            let dirty = words.firstIndex(of: "written").map { Int(words[$0 - 2]) ?? -1 } ?? -1
            return (sent, dirty)
        }
    }

    @Test("a 1 GiB region written at a steady rate converges in rounds, switches, and every page matches the source's final memory")
    func steadyWriter() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        // A small downtime budget so that more than one round runs before convergence.
        let outcome = try LiveMigration(sourceFlags: ["--downtime-ms", "2"]).run(hosts: hosts, scratch: scratch)
        #expect(outcome.workloadStatus == 0, "\(outcome.workload)\n\(outcome.dest)\n\(outcome.source)")
        #expect(outcome.workload.contains("workload: ok") && outcome.workload.contains("mismatches=0"), "\(outcome.workload)")
        let r = rounds(outcome.source)
        #expect(r.count >= 2, "\(outcome.source)")
        #expect(r.first?.sent == 262_144, "round 0 sends every page: \(outcome.source)")
        #expect(outcome.source.contains("switched to post-copy"), "\(outcome.source)")
        #expect(outcome.dest.contains("pre-copy done"), "\(outcome.dest)")
    }

    @Test("a hot set that never converges stops at the round limit and still migrates every page right")
    func hotSet() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        let outcome = try LiveMigration(pagesPerSecond: 200_000, hotPages: 2048,
                                        sourceFlags: ["--downtime-ms", "0", "--max-rounds", "4", "--stall-rounds", "100"])
            .run(hosts: hosts, scratch: scratch)
        #expect(outcome.workloadStatus == 0, "\(outcome.workload)\n\(outcome.dest)\n\(outcome.source)")
        #expect(outcome.workload.contains("workload: ok"), "\(outcome.workload)")
        #expect(rounds(outcome.source).count == 5, "\(outcome.source)")
        #expect(outcome.source.contains("round limit (4) reached"), "\(outcome.source)")
        // Writing 200 pages a millisecond, the writer always gets some in between the last
        // round's scan and the pause: the final scan must find them (and the digests above
        // show they reached the destination fresh, not stale).
        #expect(finalDirtySet(outcome.source) > 0, "\(outcome.source)")
    }

    func finalDirtySet(_ source: String) -> Int {
        guard let line = source.split(separator: "\n").first(where: { $0.contains("final dirty set") }) else { return -1 }
        let words = line.split(separator: " ")
        return words.firstIndex(of: "set").map { Int(words[$0 + 1]) ?? -1 } ?? -1
    }
}
