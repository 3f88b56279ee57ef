import Glibc
import PagerKernel

/// A ``Migration`` recorded by tcpdump on the source's veth, and the workload memory's
/// recognizable bytes, to look for in the capture.
struct MigrationCapture {
    var outcome: Migration.Outcome
    var pcap: String
    var tcpdump: String

    /// Runs `migration` between two new namespaces while tcpdump writes every packet of port
    /// 7070 to `scratch`/`name`.pcap (whole packets, a large buffer so none is dropped).
    init(_ migration: Migration, name: String, scratch: Scratch) throws {
        let hosts = try TwoHosts()
        pcap = scratch.file(name + ".pcap")
        // The test runner's threads block SIGTERM, and a spawned child inherits that mask:
        // perl (perl-base, essential in Debian) clears it, then becomes tcpdump.
        let unblocked = ["-MPOSIX", "-e", "sigprocmask(SIG_SETMASK, POSIX::SigSet->new) or die; exec @ARGV or die", Tshark.tcpdump]
        let dump = try hosts.spawn(in: hosts.source, "/usr/bin/perl",
                                   unblocked + ["-i", hosts.sourceDevice, "-w", pcap, "-s", "0", "-B", "65536", "-U", "--immediate-mode", "tcp", "port", "7070"],
                                   log: scratch.file(name + "-tcpdump.log"))
        try waitFor(dump, toPrint: "listening on")
        outcome = try migration.run(hosts: hosts, scratch: scratch, shape: "400mbit")
        // SIGTERM, not SIGINT (which a child of the test runner may inherit as ignored): tcpdump
        // writes what it holds and prints its counts.
        dump.signal(SIGTERM)
        let status = dump.wait(timeoutMilliseconds: 10_000)
        tcpdump = dump.output
        if status == nil {
            let signals = ((try? readWholeFile("/proc/\(dump.pid)/status")) ?? "").split(separator: "\n").filter { $0.hasPrefix("Sig") }
            dump.signal(SIGKILL)
            throw HarnessError("tcpdump did not stop on SIGTERM (\(signals.joined(separator: " "))): \(tcpdump)")
        }
    }

    /// The pages of the first `pages` of ``MigrationPattern`` whose 16-byte markers (words 1–2
    /// and 256–257 of the page, as they lie in memory) appear nowhere in `bytes`. Two markers
    /// per page: a page is found even when a packet boundary of the capture cuts one of them.
    /// Pages 7 and 15 of every 16 are zero and have no marker.
    static func pagesNotFound(in bytes: [UInt8], pages: Int, seed: UInt64) -> [Int] {
        var wanted: [UInt64: (page: Int, next: UInt64)] = [:]
        for p in 0..<pages where p % 16 != 7 && p % 16 != 15 {
            for w in [1, 256] {
                wanted[MigrationPattern.word(page: p, word: w, seed: seed)] = (p, MigrationPattern.word(page: p, word: w + 1, seed: seed))
            }
        }
        var found = Set<Int>()
        bytes.withUnsafeBytes { raw in
            guard raw.count >= 16 else { return }
            for i in 0...(raw.count - 16) {
                let first = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                if let (page, next) = wanted[first], raw.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self) == next { found.insert(page) }
            }
        }
        return (0..<pages).filter { $0 % 16 != 7 && $0 % 16 != 15 && !found.contains($0) }
    }
}
