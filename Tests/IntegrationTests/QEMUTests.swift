import Glibc
import PagerHarness
import PagerWorkloads
import PagerKernel
import Testing

/// The test guest, built once per test run (Deploy/qemu/make-guest.sh: Debian's kernel and a
/// busybox initramfs running a workload that fills 128 MiB and checks it for ever).
enum TestGuest {
    static let directory: String? = {
        guard access("/usr/bin/qemu-system-x86_64", X_OK) == 0, let script = guestBuilderScript(binaries: Binaries.directory) else { return nil }
        let dir = cachedGuestDirectory(builder: script)
        if access(dir + "/initrd.gz", R_OK) == 0 && access(dir + "/vmlinuz", R_OK) == 0 { return dir }
        guard (try? runProgram("/bin/bash", [script, dir, "128"]))?.status == 0 else { return nil }
        return dir
    }()
    static var present: Bool { directory != nil }
    static let missing = "QEMU or the test guest is missing: bash Deploy/setup.sh installs qemu-system-x86 and busybox-static, Deploy/qemu/make-guest.sh builds the guest"
}

@Suite("QEMU with the pager, unmodified", .serialized,
       .enabled(if: isRoot, "needs root for network namespaces and userfaultfd"),
       .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)),
       .enabled(if: TestGuest.present, Comment(rawValue: TestGuest.missing)))
struct QEMUTests {
    @Test("a running guest moves between two namespaces with pagerd qemu-source/qemu-dest over an encrypted session and keeps verifying its memory after all RAM is local; qemu-dest's metrics textfile passes promtool and counts the faults its summary counts")
    func migrateGuest() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        var run = QEMUMigrationRun(binaries: Binaries.directory, guest: TestGuest.directory!)
        run.passesAfter = 2
        run.sourceArguments = ["--encrypt", "--control-socket", scratch.file("qemu-source.control")]
        let textfile = scratch.file("qemu-dest.prom")
        run.destArguments = ["--encrypt", "--metrics-textfile", textfile, "--metrics-label", "domain=guest1"]
        let o = try run.run(hosts: hosts, scratch: scratch)
        let metrics = (try? readWholeFile(textfile)) ?? ""
        let check = try runProgram("/bin/sh", ["-c", "/usr/bin/promtool check metrics < \(textfile)"])
        #expect(access("/usr/bin/promtool", X_OK) != 0 || check.status == 0, "promtool: \(check.output)\n\(metrics)")
        let faults = o.dest.split(separator: "\n").first { $0.contains("faults  ") }.flatMap { Int($0.split(whereSeparator: { !$0.isNumber }).first ?? "") }
        let counted = metrics.split(separator: "\n").first { $0.hasPrefix("pager_dest_faults_total{") }.flatMap { Int($0.split(separator: " ").last ?? "") }
        #expect(faults != nil && counted == faults, "summary faults \(String(describing: faults)), metrics \(String(describing: counted)): \(metrics)")
        #expect(metrics.contains("pager_dest_migrations_total{role=\"qemu-dest\",domain=\"guest1\",region=") && metrics.contains("outcome=\"completed\"} 1"), "\(metrics)")
        #expect(o.dest.contains("(authenticated, encrypted)"), "\(o.dest)")
        #expect(o.source.contains("authenticated, encrypted"), "\(o.source)")
        #expect(!o.mismatch, "\(o.destConsole.suffix(3000))")
        #expect(QEMUMigrationRun.passes(o.destConsole) >= 2, "\(o.destConsole.suffix(3000))")
        #expect(o.source.contains("device state migrated"), "\(o.source)")
        #expect(o.dest.contains("all RAM local"), "\(o.dest)")
        #expect(o.totalSeconds > 0)
    }

    @Test("the pager's connections reset twice (ss -K) while the guest runs on post-copy: the session resumes, the guest keeps verifying its memory")
    func guestSurvivesResets() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        var run = QEMUMigrationRun(binaries: Binaries.directory, guest: TestGuest.directory!)
        run.passesAfter = 2
        run.shape = "400mbit" // 384 MiB: about 8 s of post-copy
        run.disrupt = { qdest in
            for round in 1...2 {
                sleepMilliseconds(1_000)
                _ = try hosts.run(in: hosts.source, "/usr/bin/ss", ["-K", "dst", TwoHosts.destAddress, "sport", "=", ":7070"])
                try waitFor(qdest, toPrint: "session resumed after", seconds: 30, occurrence: round)
            }
        }
        let o = try run.run(hosts: hosts, scratch: scratch)
        for line in o.dest.split(separator: "\n") where line.contains("session resumed after") { print("qemu resume: \(line)") }
        #expect(occurrences(of: "session resumed after", in: o.dest) == 2, "\(o.dest)")
        #expect(!o.mismatch, "\(o.destConsole.suffix(3000))")
        #expect(QEMUMigrationRun.passes(o.destConsole) >= 2, "\(o.destConsole.suffix(3000))")
        #expect(o.dest.contains("all RAM local") && !o.dest.contains("poisoned"), "\(o.dest)")
        #expect(o.source.contains("4 connection(s) resumed"), "\(o.source)")
    }

    @Test("with pre-copy (the source QEMU's writes tracked by the preload library) the guest moves in rounds while it runs, then by post-copy, and keeps verifying its memory; both connections reset (ss -K) during round 0 and the rounds go on")
    func migrateGuestWithPrecopy() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        var run = QEMUMigrationRun(binaries: Binaries.directory, guest: TestGuest.directory!)
        run.method = .pagerPrecopy
        // A 1 ms downtime budget: the guest's writes during round 0 do not fit, so at least one
        // more round runs (at most 3).
        run.sourceArguments = ["--downtime-ms", "1", "--max-rounds", "3"]
        // 384 MiB at 800 Mbit/s: round 0 takes about 4 s, and the reset lands inside it.
        run.shape = "800mbit"
        run.disruptAfter = "receiving pre-copy rounds"
        run.disrupt = { qdest in
            sleepMilliseconds(1_000)
            _ = try hosts.run(in: hosts.source, "/usr/bin/ss", ["-K", "dst", TwoHosts.destAddress, "sport", "=", ":7070"])
            try waitFor(qdest, toPrint: "pre-copy resumed after", seconds: 30)
        }
        let o = try run.run(hosts: hosts, scratch: scratch)
        for line in o.dest.split(separator: "\n") where line.contains("resumed after") { print("qemu pre-copy resume: \(line)") }
        #expect(occurrences(of: "pre-copy resumed after", in: o.dest) == 1, "\(o.dest)")
        #expect(!o.dest.contains("poisoned"), "\(o.dest)")
        #expect(o.dest.contains("(authenticated, not encrypted)"), "\(o.dest)")
        #expect(!o.mismatch, "\(o.destConsole.suffix(3000))")
        #expect(QEMUMigrationRun.passes(o.destConsole) >= 2, "\(o.destConsole.suffix(3000))")
        // Round 0 sent every page of the guest's RAM while it ran; the guest kept writing, so
        // later rounds re-sent pages; the switch stopped the VM and invalidated what it wrote.
        // (what the reset lost in flight was sent again: round 0 may count a few pages twice)
        let round0 = o.source.split(separator: "\n").first { $0.contains("pre-copy round 0: ") }
            .flatMap { Int($0.split(separator: "pre-copy round 0: ").last?.prefix { $0.isNumber } ?? "") } ?? 0
        #expect(round0 >= 98304, "\(o.source)")
        #expect(o.source.contains("pre-copy round 1: "), "\(o.source)")
        #expect(o.source.contains("switched to post-copy"), "\(o.source)")
        #expect(o.dest.contains("pre-copy staged"), "\(o.dest)")
        #expect(o.dest.contains("all RAM local"), "\(o.dest)")
    }

    @Test("guest RAM on hugetlbfs (2 MiB pages) moves with pagerd qemu-source/qemu-dest and the guest keeps verifying it")
    func migrateGuestOnHugetlbfs() throws {
        var run = guest
        // Both hosts' RAM files live on this machine: reserve huge pages for the two of them.
        let reservation = try HugePageReservation(pages: 2 * run.ramMiB / 2)
        let mount = try HugetlbfsMount()
        run.ramDirectory = mount.path
        let o = try run.run(hosts: try TwoHosts(), scratch: Scratch())
        withExtendedLifetime(mount) {}
        _ = consume reservation
        #expect(!o.mismatch, "\(o.destConsole.suffix(3000))")
        #expect(QEMUMigrationRun.passes(o.destConsole) >= 2, "\(o.destConsole.suffix(3000))")
        #expect(o.dest.contains("in 2048 KiB pages"), "\(o.dest)")
        #expect(o.dest.contains("all RAM local"), "\(o.dest)")
    }

    /// The test guest in 256 MiB, as `QEMUMigrationRun` starts it.
    var guest: QEMUMigrationRun {
        var g = QEMUMigrationRun(binaries: Binaries.directory, guest: TestGuest.directory!)
        g.ramMiB = 256
        return g
    }

    /// Starts the destination QEMU with the preload library and returns its exit status and output.
    func startDestination(extraObject: String, env: [String], scratch: Scratch) throws -> (Int32?, String) {
        let q = try ChildProcess("/usr/bin/env", env + ["LD_PRELOAD=\(QEMUMigrationRun.preloadLibrary(binaries: Binaries.directory))", "/usr/bin/qemu-system-x86_64"]
            + guest.commonArgs(console: scratch.file("console"), qmp: scratch.file("qmp"))
            + ["-incoming", "defer", "-object", extraObject, "-machine", "memory-backend=ram0"],
            outputPath: scratch.file("qemu.log"))
        let status = q.wait(timeoutMilliseconds: 30_000)
        if status == nil { q.signal(SIGKILL) }
        return (status, q.output)
    }

    @Test("the preload library stops QEMU with a clear message: prealloc=on, a private mapping, a RAM file with data, no pager listening")
    func refusals() throws {
        let scratch = Scratch()
        let ram = scratch.file("vm.ram")
        let socket = scratch.file("nobody.sock")
        let env = ["PAGER_RAM_PATH=\(ram)", "PAGER_UFFD_SOCKET=\(socket)"]
        let cases: [(String, String, () throws -> Void)] = [
            ("memory-backend-file,id=ram0,size=256M,mem-path=\(ram),share=on,prealloc=on", "prealloc=on", {}),
            ("memory-backend-file,id=ram0,size=256M,mem-path=\(ram),share=off", "mapped privately", {}),
            ("memory-backend-file,id=ram0,size=256M,mem-path=\(ram),share=on", "already holds data", {
                try sh(Binaries.workload, "fill", "--file", ram, "--size-mib", "256", "--seed", "1")
            }),
            ("memory-backend-file,id=ram0,size=256M,mem-path=\(ram),share=on", "cannot reach the pager", {}),
        ]
        for (object, expected, prepare) in cases {
            unlink(ram)
            try prepare()
            let (status, output) = try startDestination(extraObject: object, env: env, scratch: scratch)
            #expect(status == 78, "\(expected): QEMU exited \(String(describing: status)): \(output)")
            #expect(output.contains("pager-preload: FATAL") && output.contains(expected), "\(expected): \(output)")
        }
    }

    @Test("SIGTERM on pagerd qemu-dest before the source answers poisons guest RAM: QEMU touching it dies of SIGBUS instead of hanging or reading zeros")
    func destinationSignalPoisons() throws {
        let scratch = Scratch()
        let ram = scratch.file("vm.ram"), qmp = scratch.file("qmp"), socket = scratch.file("uffd.sock")
        // Nothing listens on the source port: qemu-dest keeps retrying until the signal.
        let qdest = try ChildProcess(Binaries.pagerd, ["qemu-dest", "--qmp", qmp, "--ram", ram, "--connect", "127.0.0.1:9",
                                                       "--uffd-socket", socket, "--incoming", "tcp:127.0.0.1:0", "--key-file", scratch.keyFile],
                                     outputPath: scratch.file("qemu-dest.log"))
        defer { qdest.signal(SIGKILL) }
        try waitFor(qdest, toPrint: "waiting for QEMU's handoff")
        let q = try ChildProcess("/usr/bin/env", ["LD_PRELOAD=\(QEMUMigrationRun.preloadLibrary(binaries: Binaries.directory))", "PAGER_RAM_PATH=\(ram)",
                                                  "PAGER_UFFD_SOCKET=\(socket)", "/usr/bin/qemu-system-x86_64"]
            + guest.commonArgs(console: scratch.file("console"), qmp: qmp) + ["-incoming", "defer"] + guest.ramBackend(ram),
            outputPath: scratch.file("qemu.log"))
        defer { q.signal(SIGKILL) }
        try waitFor(qdest, toPrint: "incoming migration on", seconds: 30)
        qdest.signal(SIGTERM)
        let status = qdest.wait(timeoutMilliseconds: 10_000)
        #expect(status == 1, "qemu-dest exited \(String(describing: status)): \(qdest.output)")
        #expect(qdest.output.contains("stopped by a signal") && qdest.output.contains("poisoned"), "\(qdest.output)")
        // QEMU reads guest RAM (the monitor's xp): the page is poisoned, so QEMU gets SIGBUS.
        _ = try? runProgram(Binaries.directory + "/pager-bench", ["qmp", "--socket", qmp, "--execute", "human-monitor-command",
                                                                  "--arguments", #"{"command-line":"xp /1xg 0x100000"}"#])
        let qemuStatus = q.wait(timeoutMilliseconds: 10_000)
        #expect(qemuStatus == 128 + SIGBUS, "QEMU: \(String(describing: qemuStatus)): \(q.output)")
    }

    @Test("pagerd qemu-source refuses a QEMU whose guest RAM is not a named shared file, and never serves a VM that did not stop")
    func sourceRefusals() throws {
        let scratch = Scratch()
        let console = scratch.file("console"), qmp = scratch.file("qmp"), ram = scratch.file("vm.ram")
        // A guest with anonymous RAM: nothing for the pager to serve.
        let q = try ChildProcess("/usr/bin/qemu-system-x86_64", guest.commonArgs(console: console, qmp: qmp), outputPath: scratch.file("qemu.log"))
        defer { q.signal(SIGKILL) }
        var (status, output) = try runProgram(Binaries.pagerd, ["qemu-source", "--qmp", qmp, "--ram", ram, "--listen", "127.0.0.1:0",
                                                                  "--migrate-to", "tcp:127.0.0.1:1", "--key-file", scratch.keyFile])
        #expect(status == 1 && output.contains("has no mapping of \(ram)"), "\(output)")
        q.signal(SIGKILL)
        q.wait(timeoutMilliseconds: 10_000)
        unlink(qmp)
        // Shared file RAM, but the migration cannot happen (nobody listens): no page is ever served.
        let q2 = try ChildProcess("/usr/bin/qemu-system-x86_64", guest.commonArgs(console: console, qmp: qmp) + guest.ramBackend(ram),
                                  outputPath: scratch.file("qemu2.log"))
        defer { q2.signal(SIGKILL) }
        // (exec:/bin/false fails at once; a refused TCP connection would be retried for 30 s.)
        (status, output) = try runProgram(Binaries.pagerd, ["qemu-source", "--qmp", qmp, "--ram", ram, "--listen", "127.0.0.1:0",
                                                              "--migrate-to", "exec:/bin/false", "--key-file", scratch.keyFile])
        #expect(status == 1 && output.contains("never served"), "\(output)")
        // Pre-copy asked for, but this QEMU runs without the preload library's tracking socket.
        (status, output) = try runProgram(Binaries.pagerd, ["qemu-source", "--qmp", qmp, "--ram", ram, "--listen", "127.0.0.1:0",
                                                              "--migrate-to", "exec:/bin/false", "--track-socket", scratch.file("track.sock"), "--key-file", scratch.keyFile])
        #expect(status == 1 && output.contains("nothing offers write tracking") && output.contains("PAGER_TRACK_SOCKET"), "\(output)")
    }
}

/// A hugetlbfs mount (2 MiB pages) in a fresh directory, unmounted and removed when done.
final class HugetlbfsMount {
    let path: String
    init() throws {
        var template = Array("/tmp/pager-hugetlbfs-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        let (status, output) = try runProgram("/bin/mount", ["-t", "hugetlbfs", "-o", "pagesize=2M", "none", path])
        guard status == 0 else { throw HarnessError("mount -t hugetlbfs on \(path) failed: \(output)") }
    }
    deinit {
        _ = try? runProgram("/bin/umount", [path])
        rmdir(path)
    }
}
