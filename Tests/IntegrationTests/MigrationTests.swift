import Glibc
import PagerHandoff
import PagerOperations
import PagerKernel
import Testing

/// One migration: a source in one namespace serving a filled file, a destination and a
/// workload in the other; the workload checks every page of its memory at the end.
struct Migration {
    var sizeMiB: Int
    var backing: String
    var access: String
    var seed: UInt64 = 11
    var extra: [String] = []
    var destExtra: [String] = []
    var sourceExtra: [String] = []
    /// `pagerd dest --once` (exits after the migration); false: it keeps serving until the
    /// run stops it with SIGTERM, after `afterWorkload`.
    var once = true

    struct Outcome {
        var workloadStatus: Int32?
        var destStatus: Int32?
        var workload: String
        var dest: String
        var source: String
    }

    /// `disrupt` runs once the destination has its session (fault injection on the network),
    /// `disruptBoth` too, given the source as well (to stop or kill it). With `sourceLate`,
    /// the source starts only after the destination has taken the handoff and that much time
    /// has passed (the workload's faults wait meanwhile). `beforeHandoff` runs with the source
    /// listening, before the workload starts (to disrupt the first handshake), `afterHandoff`
    /// once the destination has taken the handoff (to end that disruption).
    func run(hosts: TwoHosts, scratch: Scratch, shape: String? = nil, killSourceAfter: String? = nil,
             signal: Int32 = SIGKILL, sourceLateMilliseconds sourceLate: Int? = nil, disrupt: ((ChildProcess) throws -> Void)? = nil,
             disruptBoth: ((_ dest: ChildProcess, _ source: ChildProcess) throws -> Void)? = nil,
             beforeHandoff: ((_ source: ChildProcess) throws -> Void)? = nil,
             afterHandoff: ((_ dest: ChildProcess, _ source: ChildProcess) throws -> Void)? = nil,
             afterWorkload: ((_ dest: ChildProcess, _ source: ChildProcess) throws -> Void)? = nil) throws -> Outcome {
        let ram = scratch.file("vm-\(backing)-\(access).ram")
        try sh(Binaries.workload, "fill", "--file", ram, "--size-mib", "\(sizeMiB)", "--seed", "\(seed)")
        if let shape { try hosts.shapeSource(rate: shape) }
        let startSource = {
            let source = try hosts.spawn(in: hosts.source, Binaries.pagerd,
                                         ["source", "--listen", "\(TwoHosts.sourceAddress):7070", "--region", ram, "--key-file", scratch.keyFile] + sourceExtra,
                                         log: scratch.file("source.log"))
            try waitFor(source, toPrint: "serving 1 region")
            return source
        }
        var early: ChildProcess? = sourceLate == nil ? try startSource() : nil
        let socket = scratch.file("uffd-\(backing)-\(access).sock")
        let dest = try hosts.spawn(in: hosts.dest, Binaries.pagerd,
                                   ["dest", "--connect", "\(TwoHosts.sourceAddress):7070", "--uffd-socket", socket, "--key-file", scratch.keyFile] + (once ? ["--once"] : []) + destExtra,
                                   log: scratch.file("dest.log"))
        try waitFor(dest, toPrint: "waiting for userfaultfd handoffs")
        if let beforeHandoff, let early { try beforeHandoff(early) }
        let workload = try hosts.spawn(in: hosts.dest, Binaries.workload,
                                       ["run", "--socket", socket, "--size-mib", "\(sizeMiB)", "--backing", backing,
                                        "--access", access, "--seed", "\(seed)", "--write-every", "13"] + extra,
                                       log: scratch.file("workload.log"))
        if let sourceLate {
            try waitFor(dest, toPrint: "handoff:")
            sleepMilliseconds(sourceLate)
            early = try startSource()
        }
        let source = early!
        if let afterHandoff {
            try waitFor(dest, toPrint: "handoff:")
            try afterHandoff(dest, source)
        }
        if let marker = killSourceAfter {
            try waitFor(dest, toPrint: marker)
            source.signal(signal)
        }
        if let disrupt {
            try waitFor(dest, toPrint: "session ")
            try disrupt(dest)
        }
        if let disruptBoth {
            try waitFor(dest, toPrint: "session ")
            try disruptBoth(dest, source)
        }
        let w = workload.wait(timeoutMilliseconds: 180_000)
        if let afterWorkload { try afterWorkload(dest, source) }
        if !once { dest.signal(SIGTERM) }
        let d = dest.wait(timeoutMilliseconds: 30_000)
        source.signal(SIGCONT)
        source.signal(SIGTERM)
        source.wait(timeoutMilliseconds: 10_000)
        unlink(ram)
        return Outcome(workloadStatus: w, destStatus: d, workload: workload.output, dest: dest.output, source: source.output)
    }
}

@Suite("Post-copy across two network namespaces", .serialized,
       .enabled(if: isRoot, "needs root for network namespaces, userfaultfd and hugetlbfs"),
       .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct MigrationTests {
    static let cases: [(String, String)] = ["anon", "shm", "hugetlb"].flatMap { b in ["sequential", "random", "strided"].map { (b, $0) } }

    @Test("a 1 GiB region migrates lazily and every page is right, writes included", arguments: cases)
    func migrate(backing: String, access: String) throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        var reservation: HugePageReservation? = backing == "hugetlb" ? try HugePageReservation(pages: 512) : nil
        defer { reservation = nil }
        let outcome = try Migration(sizeMiB: 1024, backing: backing, access: access).run(hosts: hosts, scratch: scratch)
        #expect(outcome.workloadStatus == 0, "workload: \(outcome.workload)\ndest: \(outcome.dest)")
        #expect(outcome.workload.contains("workload: ok pages=262144"), "\(outcome.workload)")
        #expect(outcome.workload.contains("mismatches=0"))
        #expect(outcome.destStatus == 0, "\(outcome.dest)")
        #expect(outcome.dest.contains("(1024 MiB) local after"), "\(outcome.dest)")
        #expect(!outcome.source.contains("ended by errors") || outcome.source.contains("0 session(s) ended by errors"), "\(outcome.source)")
    }

    @Test("an encrypted migration (--encrypt on both daemons): every page right, both sides say the session is encrypted")
    func encrypted() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        var m = Migration(sizeMiB: 1024, backing: "anon", access: "random")
        m.destExtra = ["--encrypt"]
        m.sourceExtra = ["--encrypt"]
        let outcome = try m.run(hosts: hosts, scratch: scratch)
        #expect(outcome.workloadStatus == 0, "workload: \(outcome.workload)\ndest: \(outcome.dest)")
        #expect(outcome.workload.contains("workload: ok pages=262144") && outcome.workload.contains("mismatches=0"), "\(outcome.workload)")
        #expect(outcome.destStatus == 0, "\(outcome.dest)")
        #expect(outcome.dest.contains("authenticated, encrypted"), "\(outcome.dest)")
        #expect(outcome.source.contains("demand channel open, authenticated, encrypted"), "\(outcome.source)")
    }

    @Test("pages the workload drops (MADV_DONTNEED) before or after touching them read as zeros, never as the source's data")
    func discardedPages() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        var m = Migration(sizeMiB: 256, backing: "anon", access: "random")
        m.extra = ["--discard-every", "7"]
        let outcome = try m.run(hosts: hosts, scratch: scratch)
        #expect(outcome.workloadStatus == 0, "workload: \(outcome.workload)\ndest: \(outcome.dest)")
        #expect(outcome.workload.contains("mismatches=0"), "\(outcome.workload)")
        #expect(outcome.destStatus == 0, "\(outcome.dest)")
        #expect(outcome.dest.contains("discarded by the workload"), "\(outcome.dest)")
        #expect(!outcome.dest.contains(" 0 discarded by the workload"), "REMOVE events were seen: \(outcome.dest)")
    }

    @Test("shared-memory pages removed behind the pager's back (hole punched, no event) read as zeros and do not hang")
    func punchedHoles() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        // The migration must still be running when holes are punched: no push, no prefetch,
        // a quarter of the memory touched.
        var m = Migration(sizeMiB: 128, backing: "shm", access: "random")
        m.extra = ["--punch-every", "9", "--touch-pages", "8192"]
        m.destExtra = ["--no-push", "--no-prefetch"]
        let outcome = try m.run(hosts: hosts, scratch: scratch)
        #expect(outcome.workloadStatus == 0, "workload: \(outcome.workload)\ndest: \(outcome.dest)")
        #expect(outcome.workload.contains("pages=8192") && outcome.workload.contains("mismatches=0"), "\(outcome.workload)")
        #expect(outcome.destStatus == 0, "\(outcome.dest)")
        // The migration was still running at the end: the workload left (exit, or an unmap of
        // its memory just before) with pages never fetched.
        #expect(outcome.dest.contains("the workload exited with") || outcome.dest.contains("pages before it needed them"),
                "still migrating when the holes were punched: \(outcome.dest)")
    }

    @Test("an explicit prefetch hint makes a range local before it is touched: no faults on it")
    func prefetchHint() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        // No push and no prefetch around faults: only the hint can bring pages early.
        var m = Migration(sizeMiB: 256, backing: "anon", access: "sequential")
        m.extra = ["--hint-mib", "64", "--touch-pages", "\(64 * 256)"]
        m.destExtra = ["--no-push", "--no-prefetch"]
        let outcome = try m.run(hosts: hosts, scratch: scratch)
        #expect(outcome.workloadStatus == 0, "workload: \(outcome.workload)\ndest: \(outcome.dest)")
        #expect(outcome.workload.contains("pages=16384") && outcome.workload.contains("mismatches=0"), "\(outcome.workload)")
        // The pager saw no fault at all: every touched page was local before the touch. (The
        // workload's own count of slow touches includes scheduling noise, so it is not used.)
        #expect(outcome.dest.contains("faults            0,"), "\(outcome.dest)")
        #expect(outcome.dest.contains("16384 pages hinted"), "\(outcome.dest)")
        #expect(outcome.dest.contains("the workload exited with"), "\(outcome.dest)")
    }

    @Test("a source serving two regions, one a hugetlbfs file with 2 MiB pages; --region picks the one a handoff maps onto")
    func twoRegionsOneHugetlbfs() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        let mount = scratch.file("huge")
        #expect(mkdir(mount, 0o700) == 0)
        try sh("/bin/mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", mount)
        defer { _ = try? runProgram("/bin/umount", [mount]) }
        var reservation: HugePageReservation? = try HugePageReservation(pages: 2 * 128) // source file + workload
        defer { reservation = nil }
        let small = scratch.file("small.ram"), huge = mount + "/vm.ram"
        try sh(Binaries.workload, "fill", "--file", small, "--size-mib", "16", "--seed", "1")
        try sh(Binaries.workload, "fill", "--file", huge, "--size-mib", "256", "--seed", "21")
        let source = try hosts.spawn(in: hosts.source, Binaries.pagerd,
                                     ["source", "--listen", "\(TwoHosts.sourceAddress):7070", "--region", small, "--region", huge, "--key-file", scratch.keyFile],
                                     log: scratch.file("source.log"))
        defer { source.signal(SIGTERM); source.wait(timeoutMilliseconds: 10_000) }
        try waitFor(source, toPrint: "serving 2 region")
        #expect(source.output.contains("2048 KiB pages"), "\(source.output)")
        let socket = scratch.file("uffd.sock")
        let dest = try hosts.spawn(in: hosts.dest, Binaries.pagerd,
                                   ["dest", "--connect", "\(TwoHosts.sourceAddress):7070", "--uffd-socket", socket, "--once", "--region", "vm.ram", "--key-file", scratch.keyFile],
                                   log: scratch.file("dest.log"))
        try waitFor(dest, toPrint: "waiting for userfaultfd handoffs")
        let workload = try hosts.spawn(in: hosts.dest, Binaries.workload,
                                       ["run", "--socket", socket, "--size-mib", "256", "--backing", "hugetlb", "--access", "random", "--seed", "21"],
                                       log: scratch.file("workload.log"))
        #expect(workload.wait(timeoutMilliseconds: 120_000) == 0, "\(workload.output)\n\(dest.output)")
        #expect(workload.output.contains("mismatches=0"), "\(workload.output)")
        #expect(dest.wait(timeoutMilliseconds: 30_000) == 0, "\(dest.output)")
        #expect(dest.output.contains("region 2 \"vm.ram\""), "\(dest.output)")
    }

    @Test("one source serves two destinations at once; both workloads get every page right")
    func twoDestinations() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        let ram = scratch.file("shared.ram")
        try sh(Binaries.workload, "fill", "--file", ram, "--size-mib", "512", "--seed", "5")
        let source = try hosts.spawn(in: hosts.source, Binaries.pagerd, ["source", "--listen", "\(TwoHosts.sourceAddress):7070", "--region", ram, "--key-file", scratch.keyFile],
                                     log: scratch.file("source.log"))
        defer { source.signal(SIGTERM); source.wait(timeoutMilliseconds: 10_000) }
        try waitFor(source, toPrint: "serving 1 region")
        var runs: [(ChildProcess, ChildProcess)] = []
        for (i, access) in ["random", "strided"].enumerated() {
            let socket = scratch.file("uffd\(i).sock")
            let dest = try hosts.spawn(in: hosts.dest, Binaries.pagerd,
                                       ["dest", "--connect", "\(TwoHosts.sourceAddress):7070", "--uffd-socket", socket, "--once", "--key-file", scratch.keyFile],
                                       log: scratch.file("dest\(i).log"))
            try waitFor(dest, toPrint: "waiting for userfaultfd handoffs")
            let workload = try hosts.spawn(in: hosts.dest, Binaries.workload,
                                           ["run", "--socket", socket, "--size-mib", "512", "--access", access, "--seed", "5"],
                                           log: scratch.file("workload\(i).log"))
            runs.append((dest, workload))
        }
        for (dest, workload) in runs {
            #expect(workload.wait(timeoutMilliseconds: 180_000) == 0, "\(workload.output)\n\(dest.output)")
            #expect(workload.output.contains("mismatches=0"), "\(workload.output)")
            #expect(dest.wait(timeoutMilliseconds: 30_000) == 0, "\(dest.output)")
        }
        source.signal(SIGTERM)
        source.wait(timeoutMilliseconds: 10_000)
        #expect(source.output.contains("2 session(s)") && source.output.contains("0 session(s) ended by errors"), "\(source.output)")
    }

    @Test("a source that stalls (SIGSTOP) mid-migration is detected by ping and timeout; the workload gets SIGBUS")
    func sourceStalls() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        var m = Migration(sizeMiB: 1024, backing: "anon", access: "sequential")
        m.destExtra = ["--stall-timeout-ms", "2000", "--reconnect-timeout-s", "3"]
        let outcome = try m.run(hosts: hosts, scratch: scratch, shape: "200mbit", killSourceAfter: "session ", signal: SIGSTOP)
        #expect(outcome.workloadStatus == 128 + SIGBUS, "workload: \(outcome.workload)")
        #expect(outcome.destStatus == 1)
        #expect(outcome.dest.contains("stall timeout 2000 ms"), "\(outcome.dest)")
        // A stopped source's kernel still accepts connections: each resume's handshake times out.
        #expect(outcome.dest.contains("attempt(s) to resume within 3 s failed"), "\(outcome.dest)")
        #expect(outcome.dest.contains("poisoned"))
    }

    @Test("the destination daemon killed with SIGKILL mid-migration: its guardian poisons what is missing; the workload gets SIGBUS, never zeros")
    func destinationKilled() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        // 200 Mbit/s: 1 GiB takes over 40 s, so the kill lands mid-migration; nothing of the
        // daemon runs after a SIGKILL, and the workload closed its copy of the userfaultfd.
        // The kill waits until some pages are local (the status says so): at the guardian's
        // first line none may have arrived yet (the first push frame is 512 KiB, 20 ms here).
        let control = scratch.file("dest.control")
        var m = Migration(sizeMiB: 1024, backing: "anon", access: "sequential")
        m.destExtra = ["--control-socket", control]
        let outcome = try m.run(hosts: hosts, scratch: scratch, shape: "200mbit") { dest in
            try waitFor(dest, toPrint: "guardian process ")
            let deadline = monotonicNanoseconds() + 30_000_000_000
            while monotonicNanoseconds() < deadline {
                let doc = try JSONReader.parse(Array(try ControlClient.request("status", path: control).utf8), limits: .status)
                if case .array(let migrations)? = doc["migrations"], let local = migrations.first?["pages-local"]?.uint64, local > 0 { break }
            }
            dest.signal(SIGKILL)
        }
        #expect(outcome.workloadStatus == 128 + SIGBUS, "workload: \(outcome.workload)")
        #expect(!outcome.workload.contains("workload: ok") && !outcome.workload.contains("mismatch"), "\(outcome.workload)")
        #expect(outcome.destStatus == 128 + SIGKILL)
        let line = outcome.dest.split(separator: "\n").first { $0.contains("pagerd guardian:") }.map(String.init) ?? ""
        #expect(line.contains("ended holding the memory of 1 workload(s): ") && line.contains(" pages not yet local were poisoned"), "\(outcome.dest)")
        // Some pages had arrived (they stay readable), most had not.
        let poisoned = line.split(separator: " ").compactMap { Int($0) }.last ?? 0
        #expect(poisoned > 0 && poisoned < 262_144, "\(line)")
    }

    @Test("a source killed mid-migration stops the workload with SIGBUS and the daemon with a clear error; no page is zero-filled")
    func sourceKilled() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        // 200 Mbit/s: 1 GiB takes over 40 s, so the kill lands mid-migration.
        var m = Migration(sizeMiB: 1024, backing: "anon", access: "sequential")
        m.destExtra = ["--reconnect-timeout-s", "3"]
        let started = monotonicNanoseconds()
        let outcome = try m.run(hosts: hosts, scratch: scratch, shape: "200mbit", killSourceAfter: "session ")
        #expect(outcome.workloadStatus == 128 + SIGBUS, "workload: \(outcome.workload)")
        #expect(!outcome.workload.contains("workload: ok"))
        #expect(outcome.destStatus == 1)
        // Faults waited out the reconnect window (connection refused each time), then SIGBUS.
        #expect(outcome.dest.contains("faults wait while it reconnects, for up to 3 s"), "\(outcome.dest)")
        #expect(outcome.dest.contains("migration FAILED: source lost: the connections broke and"), "\(outcome.dest)")
        #expect(outcome.dest.contains("attempt(s) to resume within 3 s failed (the last: connect"), "\(outcome.dest)")
        #expect(outcome.dest.contains("poisoned"))
        #expect(monotonicNanoseconds() - started >= 3_000_000_000, "the window was waited out")
    }
}
