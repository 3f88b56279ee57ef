import Glibc
import PagerKernel
import Testing

/// Fault injection on the network between the two namespaces while a workload migrates:
/// connections reset, a blackhole, a link that goes down. Each time the session resumes and
/// the workload verifies every page (written ones included) at the end; nothing is poisoned.
@Suite("Surviving the network: sessions resume", .serialized,
       .enabled(if: isRoot, "needs root for network namespaces and userfaultfd"),
       .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct ResumeTests {
    /// 256 MiB at 200 Mbit/s: over 10 s of migration, so every disruption lands inside it.
    func migration() -> Migration {
        var m = Migration(sizeMiB: 256, backing: "anon", access: "random")
        m.destExtra = ["--reconnect-timeout-s", "30"]
        m.sourceExtra = ["--session-linger-s", "30"]
        return m
    }

    /// The measured pauses, for the log (the README quotes a run's).
    func printPauses(_ dest: String) {
        for line in dest.split(separator: "\n") where line.contains("session resumed after") || line.contains("outages  ") {
            print("resume: \(line)")
        }
    }

    /// The source's per-resume counts of what was lost in flight, for the log.
    func printResent(_ source: String) {
        for line in source.split(separator: "\n") where line.contains("lost in flight") || line.contains("sent again)") {
            print("resume: \(line)")
        }
    }

    /// Drops every packet in and out of the source's namespace (nftables), or stops dropping.
    func blackhole(_ hosts: TwoHosts, _ on: Bool) throws {
        let nft = "/usr/sbin/nft"
        guard on else {
            _ = try hosts.run(in: hosts.source, nft, ["delete", "table", "inet", "pagertest"])
            return
        }
        _ = try hosts.run(in: hosts.source, nft, ["add", "table", "inet", "pagertest"])
        for hook in ["input", "output"] {
            _ = try hosts.run(in: hosts.source, nft, ["add", "chain", "inet", "pagertest", hook,
                                                      "{ type filter hook \(hook) priority 0; policy drop; }"])
        }
    }

    /// Every page right, the destination done without error, and `outages` resumes.
    func expectResumed(_ outcome: Migration.Outcome, outages: Int) {
        printPauses(outcome.dest)
        #expect(outcome.workloadStatus == 0, "workload: \(outcome.workload)\ndest: \(outcome.dest)")
        #expect(outcome.workload.contains("workload: ok pages=65536") && outcome.workload.contains("mismatches=0"), "\(outcome.workload)")
        #expect(outcome.destStatus == 0, "\(outcome.dest)")
        #expect(outcome.dest.contains("(256 MiB) local after"), "\(outcome.dest)")
        #expect(!outcome.dest.contains("poisoned"), "\(outcome.dest)")
        #expect(occurrences(of: "session resumed after", in: outcome.dest) == outages, "\(outcome.dest)")
        #expect(outcome.dest.contains("outages           \(outages) (connections lost, \(outages) resumed"), "\(outcome.dest)")
        #expect(outcome.dest.contains("waiting faults asked for again, "), "\(outcome.dest)")
        // Each outage resumes both connections (the demand and the push one).
        #expect(outcome.source.contains("\(2 * outages) connection(s) resumed ("), "\(outcome.source)")
        #expect(outcome.source.contains("KiB sent again), 0 session(s) not resumed in time"), "\(outcome.source)")
        #expect(outcome.source.contains("0 session(s) ended by errors"), "\(outcome.source)")
        // Each resumed push took the destination's RECEIVED map, counted what was lost in
        // flight, and pushed only what is missing.
        #expect(occurrences(of: "sent before were lost in flight; the push sends what is missing", in: outcome.source) == outages, "\(outcome.source)")
        printResent(outcome.source)
    }

    @Test("both connections of an encrypted session reset (ss -K) twice mid-migration: each resume authenticates and seals like a new connection, every page is right")
    func resetTwice() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        var m = migration()
        m.destExtra += ["--encrypt"]
        m.sourceExtra += ["--encrypt"]
        let outcome = try m.run(hosts: hosts, scratch: scratch, shape: "200mbit") { dest in
            for round in 1...2 {
                sleepMilliseconds(1_500)
                _ = try hosts.run(in: hosts.source, "/usr/bin/ss", ["-K", "dst", TwoHosts.destAddress])
                try waitFor(dest, toPrint: "session resumed after", seconds: 20, occurrence: round)
            }
        }
        expectResumed(outcome, outages: 2)
        #expect(occurrences(of: "demand channel resumed, authenticated, encrypted", in: outcome.source) == 2, "\(outcome.source)")
        #expect(outcome.dest.contains("Connection reset by peer") || outcome.dest.contains("closed the connection"), "\(outcome.dest)")
    }

    @Test("a blackhole (nftables drops every packet) for 4 s: silence noticed after the 1.5 s stall timeout, the session resumes once it lifts")
    func longBlackhole() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        let outcome = try migration().run(hosts: hosts, scratch: scratch, shape: "200mbit") { dest in
            sleepMilliseconds(1_500)
            try blackhole(hosts, true)
            let dropped = monotonicNanoseconds()
            try waitFor(dest, toPrint: "connection to the source lost", seconds: 10)
            let noticed = monotonicNanoseconds() - dropped
            #expect(noticed < 3_000_000_000, "noticed after \(noticed / 1_000_000) ms")
            sleepMilliseconds(4_000 - Int(noticed / 1_000_000))
            try blackhole(hosts, false)
            try waitFor(dest, toPrint: "session resumed after", seconds: 20)
        }
        expectResumed(outcome, outages: 1)
        #expect(outcome.dest.contains("no frame from the source for"), "\(outcome.dest)")
    }

    @Test("20 outages of 0.5 s, 2 s apart: blackholes shorter than the stall timeout are ridden out; sockets the source closed during one leave half-open connections, found by the next frame out and resumed")
    func twentyOutages() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        var m = migration()
        m.sizeMiB = 1024 // about 57 s at 150 Mbit/s: longer than the 40 s of outages
        let outcome = try m.run(hosts: hosts, scratch: scratch, shape: "150mbit") { dest in
            for i in 0..<20 {
                sleepMilliseconds(1_500)
                try blackhole(hosts, true)
                // The source's resets are dropped too: the destination holds half-open
                // connections until its next frame out meets a reset.
                if i % 2 == 1 { _ = try hosts.run(in: hosts.source, "/usr/bin/ss", ["-K", "dst", TwoHosts.destAddress]) }
                sleepMilliseconds(500)
                try blackhole(hosts, false)
                #expect(dest.wait(timeoutMilliseconds: 0) == nil, "outage \(i + 1): the migration is still running")
            }
        }
        #expect(outcome.workloadStatus == 0, "workload: \(outcome.workload)\ndest: \(outcome.dest)")
        #expect(outcome.workload.contains("workload: ok pages=262144") && outcome.workload.contains("mismatches=0"), "\(outcome.workload)")
        #expect(outcome.destStatus == 0 && !outcome.dest.contains("poisoned"), "\(outcome.dest)")
        let resumed = occurrences(of: "session resumed after", in: outcome.dest)
        printPauses(outcome.dest)
        // Every reset is an outage that resumes; a 0.5 s blackhole alone is within TCP's
        // retransmissions and the stall timeout (it may still count if a timeout coincides).
        #expect(resumed >= 10, "\(outcome.dest)")
        #expect(outcome.dest.contains("outages           \(resumed) (connections lost, \(resumed) resumed"), "\(outcome.dest)")
        #expect(outcome.source.contains("0 session(s) not resumed in time"), "\(outcome.source)")
    }

    @Test("the link goes down for 3 s (ip link set down): the session resumes when it is back")
    func linkDown() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        let outcome = try migration().run(hosts: hosts, scratch: scratch, shape: "200mbit") { dest in
            sleepMilliseconds(1_500)
            _ = try hosts.run(in: hosts.source, "/usr/sbin/ip", ["link", "set", hosts.sourceDevice, "down"])
            sleepMilliseconds(3_000)
            _ = try hosts.run(in: hosts.source, "/usr/sbin/ip", ["link", "set", hosts.sourceDevice, "up"])
            try waitFor(dest, toPrint: "session resumed after", seconds: 20)
        }
        expectResumed(outcome, outages: 1)
    }

    @Test("the resume handshake itself fails: connections reset while the source is stopped (SIGSTOP), so each attempt's handshake times out; attempts go on and the session resumes once it runs again")
    func resumeHandshakeFails() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        let outcome = try migration().run(hosts: hosts, scratch: scratch, shape: "200mbit", disruptBoth: { dest, source in
            sleepMilliseconds(1_500)
            source.signal(SIGSTOP)
            // The stopped source's kernel still accepts connections: HELLO goes unanswered.
            _ = try hosts.run(in: hosts.source, "/usr/bin/ss", ["-K", "dst", TwoHosts.destAddress])
            try waitFor(dest, toPrint: "resume attempt 1 failed", seconds: 10)
            sleepMilliseconds(2_000)
            source.signal(SIGCONT)
            try waitFor(dest, toPrint: "session resumed after", seconds: 20)
        })
        printPauses(outcome.dest)
        #expect(outcome.workloadStatus == 0, "workload: \(outcome.workload)\ndest: \(outcome.dest)")
        #expect(outcome.workload.contains("workload: ok pages=65536") && outcome.workload.contains("mismatches=0"), "\(outcome.workload)")
        #expect(outcome.destStatus == 0 && !outcome.dest.contains("poisoned"), "\(outcome.dest)")
        let line = outcome.dest.split(separator: "\n").first { $0.contains("session resumed after") } ?? ""
        let attempts = line.split(separator: "(").dropFirst().first.flatMap { Int($0.prefix { $0.isNumber }) } ?? 0
        #expect(attempts >= 2, "the first attempts' handshakes timed out: \(line)")
        #expect(outcome.dest.contains("outages           1 (connections lost, 1 resumed"), "\(outcome.dest)")
        #expect(outcome.source.contains("0 session(s) ended by errors") && outcome.source.contains("0 session(s) not resumed in time"), "\(outcome.source)")
    }

    @Test("the first handshake fails: the source is stopped (SIGSTOP) when the handoff comes, so its kernel accepts but HELLO goes unanswered; each attempt times out, and the migration completes once it runs again")
    func firstHandshakeUnanswered() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        let outcome = try migration().run(hosts: hosts, scratch: scratch, beforeHandoff: { source in
            source.signal(SIGSTOP)
        }, afterHandoff: { dest, source in
            try waitFor(dest, toPrint: "cannot reach the source", seconds: 10)
            sleepMilliseconds(2_500)
            source.signal(SIGCONT)
        })
        expectFirstConnectionRetried(outcome)
    }

    @Test("the first handshake meets a blackhole (nftables drops every packet) that lifts 3 s after the handoff: connects time out, are retried, and the migration completes")
    func firstHandshakeBlackholed() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        defer { try? blackhole(hosts, false) }
        let outcome = try migration().run(hosts: hosts, scratch: scratch, beforeHandoff: { _ in
            try blackhole(hosts, true)
        }, afterHandoff: { dest, _ in
            try waitFor(dest, toPrint: "cannot reach the source", seconds: 10)
            sleepMilliseconds(3_000)
            try blackhole(hosts, false)
        })
        expectFirstConnectionRetried(outcome)
    }

    /// The first connection was retried (the session began late), then the whole migration ran:
    /// every page right, nothing poisoned, no outage after it began.
    func expectFirstConnectionRetried(_ outcome: Migration.Outcome) {
        #expect(outcome.workloadStatus == 0, "workload: \(outcome.workload)\ndest: \(outcome.dest)")
        #expect(outcome.workload.contains("workload: ok pages=65536") && outcome.workload.contains("mismatches=0"), "\(outcome.workload)")
        #expect(outcome.destStatus == 0 && !outcome.dest.contains("poisoned"), "\(outcome.dest)")
        #expect(outcome.dest.contains("retrying for up to 30 s while faults wait"), "\(outcome.dest)")
        #expect(outcome.dest.contains("(256 MiB) local after"), "\(outcome.dest)")
        #expect(outcome.dest.contains("outages           none"), "\(outcome.dest)")
    }

    @Test("the handoff comes while the source is not running yet: faults wait, the first connection is retried, and the migration completes once the source starts 2 s later")
    func sourceStartsLate() throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        let outcome = try migration().run(hosts: hosts, scratch: scratch, sourceLateMilliseconds: 2_000)
        #expect(outcome.workloadStatus == 0, "workload: \(outcome.workload)\ndest: \(outcome.dest)")
        #expect(outcome.workload.contains("workload: ok pages=65536") && outcome.workload.contains("mismatches=0"), "\(outcome.workload)")
        #expect(outcome.destStatus == 0 && !outcome.dest.contains("poisoned"), "\(outcome.dest)")
        #expect(outcome.dest.contains("retrying for up to 30 s while faults wait"), "\(outcome.dest)")
        #expect(outcome.dest.contains("(256 MiB) local after"), "\(outcome.dest)")
    }
}
