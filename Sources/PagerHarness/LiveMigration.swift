import PagerKernel

/// A live migration across two namespaces: a workload in the source namespace keeps writing
/// its memory while `pagerd source --live-socket` runs pre-copy rounds to `pagerd dest
/// --precopy`; after the switch, a workload in the destination namespace takes the memory
/// over and compares every page with the source workload's final memory (read while stopped).
public struct LiveMigration {
    public var pagerd: String
    public var workload: String
    public var sizeMiB = 1024
    public var pagesPerSecond = 20_000
    public var hotPages: Int?
    public var sourceFlags: [String] = []
    /// Send SIGUSR1 to the source daemon (force the switch) once it logs this round's end.
    public var forceSwitchAfterRound: Int?
    /// Extra `pagerd dest` arguments.
    public var destFlags: [String] = []
    /// A `tc tbf` rate for the source's link, so that rounds take long enough to disrupt.
    public var shape: String?
    /// Runs once the destination has its session, while pre-copy goes on (fault injection);
    /// given the destination and the source daemons.
    public var disrupt: ((_ dest: ChildProcess, _ source: ChildProcess) throws -> Void)?

    public init(binaries: String) {
        pagerd = binaries + "/pagerd"
        workload = binaries + "/pager-workload"
    }

    public struct Outcome: Sendable {
        public var workload: String
        public var workloadStatus: Int32?
        public var dest: String
        public var source: String

        /// Milliseconds the source's writer was stopped before SWITCHED (from the source's report).
        public var pauseMilliseconds: Double? {
            guard let line = source.split(separator: "\n").first(where: { $0.contains("workload paused") }) else { return nil }
            let words = line.split(separator: " ")
            return words.firstIndex(of: "paused").flatMap { Double(words[$0 + 1]) }
        }

        /// Pages written between the last round's scan and the pause (the final scan's find).
        public var finalDirtySet: Int? {
            guard let line = source.split(separator: "\n").first(where: { $0.contains("final dirty set") }) else { return nil }
            let words = line.split(separator: " ")
            return words.firstIndex(of: "set").flatMap { Int(words[$0 + 1]) }
        }

        /// Each round's (pages sent, pages found written during it).
        public var rounds: [(sent: Int, dirty: Int)] {
            source.split(separator: "\n").filter { $0.contains("pagerd source: pre-copy round ") }.map { line in
                let words = line.split(separator: " ")
                let sent = words.firstIndex(of: "pages").flatMap { Int(words[$0 - 1]) } ?? -1
                let dirty = words.firstIndex(of: "written").flatMap { Int(words[$0 - 2]) } ?? -1
                return (sent, dirty)
            }
        }
    }

    public func run(hosts: TwoHosts, scratch: Scratch) throws -> Outcome {
        let live = scratch.file("live.sock")
        let source = try hosts.spawn(in: hosts.source, pagerd,
                                     ["source", "--listen", "\(TwoHosts.sourceAddress):7070", "--live-socket", live, "--key-file", scratch.keyFile] + sourceFlags,
                                     log: scratch.file("source.log"))
        defer { source.signal(.kill) }
        try waitFor(source, toPrint: "waiting for a workload")
        var writerArgs = ["live", "--socket", live, "--size-mib", "\(sizeMiB)", "--pages-per-second", "\(pagesPerSecond)"]
        if let hotPages { writerArgs += ["--hot-pages", "\(hotPages)"] }
        let writer = try hosts.spawn(in: hosts.source, workload, writerArgs, log: scratch.file("writer.log"))
        defer { writer.signal(.kill) }
        try waitFor(writer, toPrint: "live memory handed over", seconds: 60)
        try waitFor(source, toPrint: "serving 1 region")
        let socket = scratch.file("dest.sock")
        if let shape { try hosts.shapeSource(rate: shape) }
        let dest = try hosts.spawn(in: hosts.dest, pagerd,
                                   ["dest", "--connect", "\(TwoHosts.sourceAddress):7070", "--uffd-socket", socket, "--precopy", "--key-file", scratch.keyFile] + destFlags,
                                   log: scratch.file("dest.log"))
        defer { dest.signal(.kill) }
        if let disrupt {
            try waitFor(dest, toPrint: "receiving pre-copy rounds", seconds: 30)
            try disrupt(dest, source)
        }
        if let round = forceSwitchAfterRound {
            try waitFor(source, toPrint: "pre-copy round \(round) of region", seconds: 60)
            source.signal(.user1)
        }
        try waitFor(dest, toPrint: "waiting for the userfaultfd handoff", seconds: 120)
        // The source stopped the writer at the switch: its memory is final. Digest it.
        guard let base = keyValues(writer.output)["base"].map({ UInt64($0) }) else {
            throw HarnessError("the live workload did not say where its memory is: \(writer.output)")
        }
        let digests = scratch.file("source.digests")
        try sh(workload, "digest", "--pid", "\(writer.pid)", "--address", "\(base)", "--size-mib", "\(sizeMiB)", "--out", digests)
        let checker = try hosts.spawn(in: hosts.dest, workload,
                                      ["run", "--socket", socket, "--size-mib", "\(sizeMiB)", "--access", "random",
                                       "--write-every", "13", "--expect-digests", digests],
                                      log: scratch.file("workload.log"))
        let w = checker.wait(timeoutMilliseconds: 180_000)
        dest.wait(timeoutMilliseconds: 30_000)
        source.signal(.terminate)
        source.wait(timeoutMilliseconds: 10_000)
        return Outcome(workload: checker.output, workloadStatus: w, dest: dest.output, source: source.output)
    }
}
