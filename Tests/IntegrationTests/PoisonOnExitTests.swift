import Glibc
import PagerKernel
import PagerTransport
import PagerWire
import Testing

/// `pagerd dest` has taken a workload's userfaultfd: whatever ends it before every page is
/// local must poison what is missing, so the workload dies of SIGBUS and never reads zeros.
/// (A source that announces regions the destination refuses, or sends frames it refuses:
/// HostileSourceTests.)
@Suite("Every exit after a handoff poisons", .serialized,
       .enabled(if: isRoot, "needs root for userfaultfd"),
       .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct PoisonOnExitTests {
    struct Outcome {
        var workloadStatus: Int32?
        var destStatus: Int32?
        var workload: String
        var dest: String
    }

    /// Runs a 64 MiB workload against `pagerd dest --connect source`; `during`, if given, runs
    /// once the destination has the handoff (it may signal the daemon).
    func handOff(to source: Endpoint, destExtra: [String] = [], workloadExtra: [String] = [],
                 during: ((ChildProcess) throws -> Void)? = nil) throws -> Outcome {
        let scratch = Scratch()
        let socket = scratch.file("uffd.sock")
        let dest = try ChildProcess(Binaries.pagerd, ["dest", "--connect", "\(source)", "--uffd-socket", socket, "--once", "--key-file", scratch.keyFile] + destExtra,
                                    outputPath: scratch.file("dest.log"))
        try waitFor(dest, toPrint: "waiting for userfaultfd handoffs")
        let workload = try ChildProcess(Binaries.workload, ["run", "--socket", socket, "--size-mib", "64", "--access", "sequential"] + workloadExtra,
                                        outputPath: scratch.file("workload.log"))
        if let during {
            try waitFor(dest, toPrint: "handoff:")
            try during(dest)
        }
        let w = workload.wait(timeoutMilliseconds: 60_000)
        let d = dest.wait(timeoutMilliseconds: 30_000)
        if w == nil { workload.signal(SIGKILL) }
        if d == nil { dest.signal(SIGKILL) }
        return Outcome(workloadStatus: w, destStatus: d, workload: workload.output, dest: dest.output)
    }

    func expectPoisoned(_ o: Outcome, _ because: String) {
        #expect(o.workloadStatus == 128 + SIGBUS, "workload (\(because)): \(o.workload)")
        #expect(!o.workload.contains("workload: ok") && !o.workload.contains("CORRUPT"), "\(o.workload)")
        #expect(o.destStatus != 0 && o.destStatus != nil, "dest status \(String(describing: o.destStatus))")
        #expect(o.dest.contains("poisoned"), "\(o.dest)")
    }

    @Test("the source is unreachable at the handoff (connection refused)")
    func unreachable() throws {
        // A port that was just free: nothing listens there.
        let port = try TCPListener(Endpoint(host: "127.0.0.1", port: 0)).endpoint.port
        let started = monotonicNanoseconds()
        let o = try handOff(to: Endpoint(host: "127.0.0.1", port: port), destExtra: ["--reconnect-timeout-s", "2"])
        expectPoisoned(o, "unreachable")
        // Retried while the faults waited, for the window, then poisoned.
        #expect(o.dest.contains("retrying for up to 2 s while faults wait"), "\(o.dest)")
        #expect(o.dest.contains("could not be reached in") && o.dest.contains("within 2 s (the last: connect failed") && o.dest.contains("Connection refused"), "\(o.dest)")
        #expect(monotonicNanoseconds() - started >= 1_000_000_000, "retried most of the window (it stops when the next wait would pass it)")
    }

    @Test("a handoff the daemon refuses (malformed JSON, the userfaultfd attached): what it covers is poisoned")
    func refusedHandoff() throws {
        let region = RegionDescriptor(id: 1, pageShift: 12, flags: [], length: 64 << 20, name: "unused")
        let source = try ScriptedSource(.regions([region]))
        let o = try handOff(to: source.endpoint, workloadExtra: ["--malformed-handoff"])
        expectPoisoned(o, "refused handoff")
        #expect(o.dest.contains("16384 missing pages its userfaultfd covered were poisoned"), "\(o.dest)")
    }

    @Test("the source refuses the session with an ERROR")
    func refused() throws {
        let source = try ScriptedSource(.refuse(ProtocolError(code: .unsupportedVersion, message: "scripted refusal")))
        let o = try handOff(to: source.endpoint)
        expectPoisoned(o, "refused")
        #expect(o.dest.contains("scripted refusal"), "\(o.dest)")
    }

    @Test("a fatal signal (SIGQUIT, as a crash would) while the daemon holds the memory")
    func fatalSignal() throws {
        let region = RegionDescriptor(id: 1, pageShift: 12, flags: [], length: 64 << 20, name: "silent")
        let source = try ScriptedSource(.regions([region]))
        let o = try handOff(to: source.endpoint) { dest in
            try waitFor(dest, toPrint: "session ")
            dest.signal(SIGQUIT)
        }
        #expect(o.workloadStatus == 128 + SIGBUS, "workload: \(o.workload)")
        #expect(o.destStatus == 128 + SIGQUIT, "dest status \(String(describing: o.destStatus))")
        #expect(o.dest.contains("fatal signal: every page not yet local was poisoned"), "\(o.dest)")
    }

    @Test("a second SIGTERM aborts a migration in progress: its missing pages are poisoned")
    func secondTerm() throws {
        let region = RegionDescriptor(id: 1, pageShift: 12, flags: [], length: 64 << 20, name: "silent")
        let source = try ScriptedSource(.regions([region]))
        let o = try handOff(to: source.endpoint) { dest in
            try waitFor(dest, toPrint: "session ")
            dest.signal(SIGTERM)
            try waitFor(dest, toPrint: "signal again to abort")
            dest.signal(SIGTERM)
        }
        expectPoisoned(o, "second SIGTERM")
        #expect(o.dest.contains("aborted by signal"), "\(o.dest)")
    }

    /// The pid in the daemon's "guardian process N" line (the last one: after a replacement,
    /// "started guardian process N").
    func guardianPid(_ output: String) -> pid_t? {
        let lines = output.split(separator: "\n").filter { $0.contains("guardian process ") }
        guard let words = lines.last?.split(separator: " "),
              let at = words.indices.last(where: { $0 > 0 && $0 + 1 < words.count && words[$0] == "process" && words[$0 - 1] == "guardian" })
        else { return nil }
        return pid_t(words[at + 1].prefix { $0.isNumber })
    }

    @Test("SIGKILL of the daemon (nothing of it runs): its guardian poisons every missing page")
    func killed() throws {
        let region = RegionDescriptor(id: 1, pageShift: 12, flags: [], length: 64 << 20, name: "silent")
        let source = try ScriptedSource(.regions([region]))
        let o = try handOff(to: source.endpoint) { dest in
            try waitFor(dest, toPrint: "session ")
            dest.signal(SIGKILL)
            try waitFor(dest, toPrint: "pagerd guardian:", afterExit: true)
        }
        #expect(o.workloadStatus == 128 + SIGBUS, "workload: \(o.workload)")
        #expect(!o.workload.contains("workload: ok") && !o.workload.contains("mismatch"), "\(o.workload)")
        #expect(o.destStatus == 128 + SIGKILL)
        // Nothing was ever served: all 16384 pages were missing.
        #expect(o.dest.contains("ended holding the memory of 1 workload(s): 16384 pages not yet local were poisoned"), "\(o.dest)")
    }

    @Test("the guardian killed first is replaced with every guard, and the replacement poisons after the daemon's SIGKILL")
    func guardianReplaced() throws {
        let region = RegionDescriptor(id: 1, pageShift: 12, flags: [], length: 64 << 20, name: "silent")
        let source = try ScriptedSource(.regions([region]))
        var first: pid_t?
        let o = try handOff(to: source.endpoint) { dest in
            try waitFor(dest, toPrint: "session ")
            first = guardianPid(dest.output)
            guard let first else { return }
            kill(first, SIGKILL)
            try waitFor(dest, toPrint: "covering 1 workload(s)")
            dest.signal(SIGKILL)
            try waitFor(dest, toPrint: "pagerd guardian:", afterExit: true)
        }
        #expect(first != nil, "\(o.dest)")
        #expect(o.dest.contains("guardian process \(first ?? 0) was killed by signal 9: started guardian process "), "\(o.dest)")
        #expect(o.workloadStatus == 128 + SIGBUS, "workload: \(o.workload)")
        #expect(o.dest.contains("ended holding the memory of 1 workload(s): 16384 pages not yet local were poisoned"), "\(o.dest)")
    }

    @Test("a migration that completes releases the guard: the guardian drops its copy of the userfaultfd at once and ends with the daemon, poisoning nothing")
    func completedReleases() throws {
        let scratch = Scratch()
        let ram = scratch.file("vm.ram")
        try sh(Binaries.workload, "fill", "--file", ram, "--size-mib", "64", "--seed", "5")
        defer { unlink(ram) }
        let port = try TCPListener(Endpoint(host: "127.0.0.1", port: 0)).endpoint.port
        let source = try ChildProcess(Binaries.pagerd, ["source", "--listen", "127.0.0.1:\(port)", "--region", ram, "--key-file", scratch.keyFile],
                                      outputPath: scratch.file("source.log"))
        defer { source.signal(SIGTERM); source.wait(timeoutMilliseconds: 10_000) }
        try waitFor(source, toPrint: "serving 1 region")
        let socket = scratch.file("uffd.sock")
        let dest = try ChildProcess(Binaries.pagerd, ["dest", "--connect", "127.0.0.1:\(port)", "--uffd-socket", socket, "--key-file", scratch.keyFile],
                                    outputPath: scratch.file("dest.log"))
        try waitFor(dest, toPrint: "waiting for userfaultfd handoffs")
        let guardian = try #require(guardianPid(dest.output), "\(dest.output)")
        let workload = try ChildProcess(Binaries.workload, ["run", "--socket", socket, "--size-mib", "64", "--access", "random", "--seed", "5"],
                                        outputPath: scratch.file("workload.log"))
        #expect(workload.wait(timeoutMilliseconds: 60_000) == 0, "\(workload.output)")
        #expect(workload.output.contains("mismatches=0"), "\(workload.output)")
        try waitFor(dest, toPrint: "pages (64 MiB) local after")
        // The release is sent before the summary is printed; the guardian closes its copy
        // when it reads it. Another process closing a descriptor raises no event here: look
        // every 10 ms, for at most 5 s.
        let deadline = monotonicNanoseconds() + 5_000_000_000
        while userfaultfdCount(guardian) > 0 && monotonicNanoseconds() < deadline { sleepMilliseconds(10) }
        #expect(userfaultfdCount(guardian) == 0, "the guardian still holds a userfaultfd after the migration completed")
        dest.signal(SIGTERM)
        #expect(dest.wait(timeoutMilliseconds: 10_000) == 0, "\(dest.output)")
        #expect(waitForExit(ofProcess: guardian, timeoutMilliseconds: 5_000), "the guardian ends with the daemon")
        #expect(!dest.output.contains("pagerd guardian:"), "\(dest.output)")
    }

    func userfaultfdCount(_ pid: pid_t) -> Int {
        descriptorTargets(ofProcess: pid).filter { $0.contains("userfaultfd") }.count
    }
}
