import PagerKernel

/// A QEMU guest migrated between the two namespaces, with the pager (`pagerd qemu-source` /
/// `pagerd qemu-dest`, guest RAM on demand) or with QEMU's own postcopy, the same guest and
/// workload both ways. The guest checks its own memory continuously and prints on its serial
/// console (see Deploy/qemu/guest-workload.c).
public struct QEMUMigrationRun {
    public enum Method: String, Sendable, CaseIterable {
        case pager
        /// Pre-copy rounds of guest RAM (the source QEMU's preload library tracks writes), then post-copy.
        case pagerPrecopy = "pager-precopy"
        case nativePostcopy = "native-postcopy"
    }

    public var binaries: String
    /// Directory with `vmlinuz` and `initrd.gz` (Deploy/qemu/make-guest.sh).
    public var guest: String
    public var ramMiB = 384
    public var method = Method.pager
    /// Passes the guest must complete on the destination after all RAM is local.
    public var passesAfter = 2
    /// More arguments for `pagerd qemu-source` (e.g. the pre-copy convergence rules).
    public var sourceArguments: [String] = []
    /// More arguments for `pagerd qemu-dest` (pager methods).
    public var destArguments: [String] = []
    /// Rate limit on the source's side of the link (`tc tbf`), so that post-copy lasts.
    public var shape: String?
    /// Runs once `pagerd qemu-dest` prints `disruptAfter`: fault injection.
    public var disrupt: ((ChildProcess) throws -> Void)?
    /// When `disrupt` runs: by default once the guest runs here (post-copy).
    public var disruptAfter = "guest running here"

    /// Where the two RAM files go (e.g. a hugetlbfs mount); nil: the run's scratch directory.
    public var ramDirectory: String?

    public init(binaries: String, guest: String) {
        self.binaries = binaries
        self.guest = guest
    }

    public struct Outcome: Sendable {
        public var sourceConsole: String
        public var destConsole: String
        public var source: String
        public var dest: String
        /// From the source's `migrate` until QEMU reported it completed.
        public var totalSeconds: Double
        /// The longest stall the guest saw in its own progress checks (its clock), in ms,
        /// over the passes around the migration.
        public var guestPauseMilliseconds: Int
        /// Destination blocktime (native) or fault-to-install p50/p99 (pager), as reported.
        public var faultSummary: String
        public var mismatch: Bool { sourceConsole.contains("MISMATCH") || destConsole.contains("MISMATCH") }
    }

    static let qemu = "/usr/bin/qemu-system-x86_64"

    /// QEMU's arguments for the test guest with its serial console in file `console` and QMP on
    /// socket `qmp` (RAM backend not included).
    public func commonArgs(console: String, qmp: String) -> [String] {
        ["-machine", "q35", "-m", "\(ramMiB)M", "-kernel", guest + "/vmlinuz", "-initrd", guest + "/initrd.gz",
         "-append", "console=ttyS0 quiet panic=-1", "-nographic", "-no-reboot", "-accel", "tcg", "-monitor", "none",
         "-display", "none", "-serial", "file:" + console, "-qmp", "unix:\(qmp),server=on,wait=off"]
    }

    /// A named shared RAM file as the guest's memory (`ram0`).
    public func ramBackend(_ path: String) -> [String] {
        ["-object", "memory-backend-file,id=ram0,size=\(ramMiB)M,mem-path=\(path),share=on", "-machine", "memory-backend=ram0"]
    }

    /// A serial console's lines: it ends them with CR LF, which Swift treats as one Character,
    /// so split on either.
    static func lines(_ console: String) -> [Substring] {
        console.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
    }

    /// Counts "pass N ok" lines in a console log.
    public static func passes(_ console: String) -> Int { lines(console).filter { $0.hasPrefix("pass ") && $0.contains(" ok ") }.count }

    static func maxGap(_ lines: some Sequence<Substring>) -> Int {
        lines.compactMap { line -> Int? in
            guard let r = line.firstRange(of: "max-gap-ms=") else { return nil }
            return Int(line[r.upperBound...].prefix { $0.isNumber })
        }.max() ?? 0
    }

    public func run(hosts: TwoHosts, scratch: Scratch) throws -> Outcome {
        if let shape { try hosts.shapeSource(rate: shape) }
        let srcConsole = scratch.file("src.console"), dstConsole = scratch.file("dst.console")
        let srcQMP = scratch.file("src.qmp"), dstQMP = scratch.file("dst.qmp")
        let srcRAM = ramDirectory.map { $0 + "/src.ram" } ?? scratch.file("src.ram")
        let dstRAM = ramDirectory.map { $0 + "/dst.ram" } ?? scratch.file("dst.ram")
        defer { if ramDirectory != nil { removeFile(srcRAM); removeFile(dstRAM) } }
        var srcArgs = commonArgs(console: srcConsole, qmp: srcQMP)
        var dstArgs = commonArgs(console: dstConsole, qmp: dstQMP) + ["-incoming", "defer"]
        if method != .nativePostcopy {
            srcArgs += ramBackend(srcRAM)
            dstArgs += ramBackend(dstRAM)
        }
        let trackSocket = scratch.file("track.sock")
        let source = method == .pagerPrecopy
            ? try hosts.spawn(in: hosts.source, "/usr/bin/env", ["LD_PRELOAD=\(QEMUMigrationRun.preloadLibrary(binaries: binaries))", "PAGER_RAM_PATH=\(srcRAM)",
                                                                "PAGER_TRACK_SOCKET=\(trackSocket)", Self.qemu] + srcArgs, log: scratch.file("src.qemu.log"))
            : try hosts.spawn(in: hosts.source, Self.qemu, srcArgs, log: scratch.file("src.qemu.log"))
        defer { source.signal(.kill) }
        // The guest boots and fills its memory; two verified passes mean it runs.
        let deadline = monotonicNanoseconds() + 120_000_000_000
        while Self.passes((try? readWholeFile(srcConsole)) ?? "") < 2 {
            if let status = source.wait(timeoutMilliseconds: 50) {
                throw HarnessError("source QEMU exited \(status) before its guest ran: \(source.output)")
            }
            if monotonicNanoseconds() > deadline { throw HarnessError("the source guest did not run within 120 s: \((try? readWholeFile(srcConsole)) ?? "")") }
        }
        let outcome: Outcome
        switch method {
        case .pager, .pagerPrecopy:
            outcome = try runPager(hosts: hosts, scratch: scratch, dstArgs: dstArgs, srcQMP: srcQMP, dstQMP: dstQMP, srcRAM: srcRAM, dstRAM: dstRAM,
                                   srcConsole: srcConsole, dstConsole: dstConsole, trackSocket: method == .pagerPrecopy ? trackSocket : nil)
        case .nativePostcopy: outcome = try runNative(hosts: hosts, scratch: scratch, dstArgs: dstArgs, srcQMP: srcQMP, dstQMP: dstQMP,
                                                      srcConsole: srcConsole, dstConsole: dstConsole)
        }
        return outcome
    }

    /// After the migration: waits until the destination guest has completed `passesAfter`
    /// more verification passes (all RAM was local when counting started).
    func waitForPasses(after start: Int, console: String, dest: ChildProcess) throws {
        let deadline = monotonicNanoseconds() + 120_000_000_000
        while Self.passes((try? readWholeFile(console)) ?? "") < start + passesAfter {
            let text = (try? readWholeFile(console)) ?? ""
            if text.contains("MISMATCH") { return }
            if let status = dest.wait(timeoutMilliseconds: 50) { throw HarnessError("destination QEMU exited \(status): \(dest.output)") }
            if monotonicNanoseconds() > deadline { throw HarnessError("the destination guest did not complete \(passesAfter) passes within 120 s: \(text.suffix(2000))") }
        }
    }

    func runPager(hosts: TwoHosts, scratch: Scratch, dstArgs: [String], srcQMP: String, dstQMP: String, srcRAM: String, dstRAM: String,
                  srcConsole: String, dstConsole: String, trackSocket: String?) throws -> Outcome {
        let pagerd = binaries + "/pagerd"
        let uffdSocket = scratch.file("uffd.sock")
        let qdest = try hosts.spawn(in: hosts.dest, pagerd,
                                    ["qemu-dest", "--qmp", dstQMP, "--ram", dstRAM, "--connect", "\(TwoHosts.sourceAddress):7070",
                                     "--uffd-socket", uffdSocket, "--incoming", "tcp:0.0.0.0:4444", "--key-file", scratch.keyFile] + (trackSocket == nil ? [] : ["--precopy"]) + destArguments,
                                    log: scratch.file("qemu-dest.log"))
        defer { qdest.signal(.kill) }
        try waitFor(qdest, toPrint: "waiting for QEMU's handoff")
        let dest = try hosts.spawn(in: hosts.dest, "/usr/bin/env",
                                   ["LD_PRELOAD=\(QEMUMigrationRun.preloadLibrary(binaries: binaries))", "PAGER_RAM_PATH=\(dstRAM)", "PAGER_UFFD_SOCKET=\(uffdSocket)",
                                    Self.qemu] + dstArgs, log: scratch.file("dst.qemu.log"))
        defer { dest.signal(.kill) }
        try waitFor(dest, toPrint: "handed to the pager", seconds: 30)
        try waitFor(qdest, toPrint: "incoming migration on", seconds: 30)
        let qsource = try hosts.spawn(in: hosts.source, pagerd,
                                      ["qemu-source", "--qmp", srcQMP, "--ram", srcRAM, "--listen", "\(TwoHosts.sourceAddress):7070",
                                       "--migrate-to", "tcp:\(TwoHosts.destAddress):4444", "--key-file", scratch.keyFile] + (trackSocket.map { ["--track-socket", $0] } ?? []) + sourceArguments,
                                      log: scratch.file("qemu-source.log"))
        defer { qsource.signal(.kill) }
        if let disrupt {
            try waitFor(qdest, toPrint: disruptAfter, seconds: 120)
            try disrupt(qdest)
        }
        let s = qsource.wait(timeoutMilliseconds: 180_000)
        let d = qdest.wait(timeoutMilliseconds: 180_000)
        guard s == 0, d == 0 else {
            throw HarnessError("pagerd qemu-source exited \(String(describing: s)), qemu-dest \(String(describing: d)):\n\(qsource.output)\n\(qdest.output)\n\(dest.output)")
        }
        // qemu-dest has exited: every page is local. The guest must now pass its checks.
        let after = Self.passes((try? readWholeFile(dstConsole)) ?? "")
        try waitForPasses(after: after, console: dstConsole, dest: dest)
        let srcText = (try? readWholeFile(srcConsole)) ?? "", dstText = (try? readWholeFile(dstConsole)) ?? ""
        // Total: from the source's `migrate` (with pre-copy: the first round) until every page
        // of guest RAM is local (what QEMU's postcopy "completed" means); both daemons print
        // CLOCK_MONOTONIC stamps.
        let stamps = keyValues(qsource.output)
        let issued = stamps["precopy-started-ns"] ?? stamps["migrate-issued-ns"] ?? 0, local = keyValues(qdest.output)["all-local-ns"] ?? 0
        let total = (local - issued) / 1e9
        let faults = qdest.output.split(separator: "\n").first { $0.contains("fault to install") }.map { String($0).trimmingPrefixSpaces() } ?? ""
        return Outcome(sourceConsole: srcText, destConsole: dstText, source: qsource.output, dest: qdest.output,
                       totalSeconds: total,
                       guestPauseMilliseconds: Swift.max(Self.maxGap(Self.lines(srcText).suffix(2)),
                                                         Self.maxGap(Self.lines(dstText).filter { $0.hasPrefix("pass ") }.prefix(3))),
                       faultSummary: faults)
    }

    func runNative(hosts: TwoHosts, scratch: Scratch, dstArgs: [String], srcQMP: String, dstQMP: String,
                   srcConsole: String, dstConsole: String) throws -> Outcome {
        let dest = try hosts.spawn(in: hosts.dest, Self.qemu, dstArgs, log: scratch.file("dst.qemu.log"))
        defer { dest.signal(.kill) }
        let control = binaries + "/pager-bench"
        // QMP on both sides through pager-bench's small helper (one command per call).
        func qmp(_ ns: String, _ socket: String, _ command: String, _ args: String = "{}") throws -> String {
            try hosts.run(in: ns, control, ["qmp", "--socket", socket, "--execute", command, "--arguments", args])
        }
        let caps = #"{"capabilities":[{"capability":"postcopy-ram","state":true},{"capability":"postcopy-preempt","state":true}]}"#
        let dcaps = #"{"capabilities":[{"capability":"postcopy-ram","state":true},{"capability":"postcopy-preempt","state":true},{"capability":"postcopy-blocktime","state":true}]}"#
        _ = try qmp(hosts.dest, dstQMP, "migrate-set-capabilities", dcaps)
        _ = try qmp(hosts.dest, dstQMP, "migrate-incoming", #"{"uri":"tcp:0.0.0.0:4444"}"#)
        _ = try qmp(hosts.source, srcQMP, "migrate-set-capabilities", caps)
        let started = monotonicNanoseconds()
        _ = try qmp(hosts.source, srcQMP, "migrate", "{\"uri\":\"tcp:\(TwoHosts.destAddress):4444\"}")
        _ = try qmp(hosts.source, srcQMP, "migrate-start-postcopy")
        var status = ""
        while status != "completed" {
            status = try qmp(hosts.source, srcQMP, "query-migrate").split(separator: "\n").first { $0.hasPrefix("status=") }.map { String($0.dropFirst(7)) } ?? ""
            if status == "failed" || status == "cancelled" { throw HarnessError("native postcopy \(status)") }
            if monotonicNanoseconds() - started > 180_000_000_000 { throw HarnessError("native postcopy did not complete in 180 s") }
            sleepMilliseconds(10)
        }
        let total = Double(monotonicNanoseconds() - started) / 1e9
        let blocktime = try qmp(hosts.dest, dstQMP, "query-migrate").split(separator: "\n").filter { $0.hasPrefix("postcopy-blocktime") }.joined(separator: " ")
        let after = Self.passes((try? readWholeFile(dstConsole)) ?? "")
        try waitForPasses(after: after, console: dstConsole, dest: dest)
        let srcText = (try? readWholeFile(srcConsole)) ?? "", dstText = (try? readWholeFile(dstConsole)) ?? ""
        return Outcome(sourceConsole: srcText, destConsole: dstText, source: "", dest: "", totalSeconds: total,
                       guestPauseMilliseconds: Swift.max(Self.maxGap(Self.lines(srcText).suffix(2)),
                                                         Self.maxGap(Self.lines(dstText).filter { $0.hasPrefix("pass ") }.prefix(3))),
                       faultSummary: blocktime.isEmpty ? "blocktime not reported" : blocktime)
    }
}

extension QEMUMigrationRun {
    /// The preload library QEMU loads: the plain C build that ships (Deploy/build-preload.sh,
    /// which Deploy/test.sh runs) where it exists, else SwiftPM's build of the same source.
    public static func preloadLibrary(binaries: String) -> String {
        let plain = binaries + "/plain/libpager-preload.so"
        return isReadableFile(plain) ? plain : binaries + "/libpager-preload.so"
    }
}

extension String {
    func trimmingPrefixSpaces() -> String { String(drop { $0 == " " }) }
}

/// Deploy/qemu/make-guest.sh of the source tree these binaries were built from.
public func guestBuilderScript(binaries: String) -> String? {
    for up in ["/../..", "/../../.."] {
        let path = binaries + up + "/Deploy/qemu/make-guest.sh"
        if isReadableFile(path) { return path }
    }
    return nil
}

/// A directory for the test guest built from this source tree: named after the builder's and
/// the workload's sizes and modification times, so an edited workload gets a fresh guest.
public func cachedGuestDirectory(builder script: String) -> String {
    var key = ""
    for path in [script, script.split(separator: "/").dropLast().joined(separator: "/") + "/guest-workload.c"] {
        let p = path.hasPrefix("/") ? path : "/" + path
        if let st = fileSizeAndModificationTime(p) { key += "-\(st.bytes)-\(st.modifiedSeconds)" }
    }
    return "/tmp/pager-guest" + key
}
