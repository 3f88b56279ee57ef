import Glibc
import PagerHandoff
import PagerKernel
import PagerWire
import SystemPackage
import Testing

/// A fake systemd: the datagrams a daemon sends to `$NOTIFY_SOCKET`.
final class FakeNotifySocket {
    let path: String
    private let socket: FileDescriptor

    init(_ scratch: Scratch) throws {
        path = scratch.file("notify.sock")
        socket = try UnixSocket.bindDatagram(path: path)
    }

    deinit { try? socket.close() }

    /// The next datagram, as text; nil if none comes within `seconds`.
    func next(seconds: Int32 = 10) throws -> String? {
        guard try UnixSocket.waitReadable(socket, timeoutMilliseconds: seconds * 1000) else { return nil }
        return String(decoding: try UnixSocket.receive(socket, maxBytes: 4096, maxDescriptors: 0).bytes, as: UTF8.self)
    }

    /// Datagrams until one contains `text` (which is returned); records an issue if none does.
    func awaitMessage(containing text: String) throws -> String? {
        while let m = try next() {
            if m.contains(text) { return m }
        }
        Issue.record("no notification containing \(text)")
        return nil
    }
}

@Suite("systemd notifications (Type=notify)", .serialized,
       .enabled(if: isRoot, "needs root for userfaultfd"),
       .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct ServiceNotifyTests {
    @Test("pagerd dest: READY=1 when waiting for handoffs, STATUS= per migration, STOPPING=1 on SIGTERM")
    func dest() throws {
        let scratch = Scratch()
        let notify = try FakeNotifySocket(scratch)
        let source = try ScriptedSource(.refuse(ProtocolError(code: .unsupportedVersion, message: "scripted refusal")))
        let socket = scratch.file("uffd.sock")
        let dest = try ChildProcess("/usr/bin/env", ["NOTIFY_SOCKET=\(notify.path)", Binaries.pagerd, "dest", "--connect", "\(source.endpoint)",
                                                     "--uffd-socket", socket, "--key-file", scratch.keyFile], outputPath: scratch.file("dest.log"))
        let ready = try notify.awaitMessage(containing: "READY=1")
        #expect(ready?.contains("STATUS=waiting for userfaultfd handoffs") == true, "\(ready ?? "")")
        let workload = try ChildProcess(Binaries.workload, ["run", "--socket", socket, "--size-mib", "16", "--access", "sequential"],
                                        outputPath: scratch.file("workload.log"))
        #expect(try notify.awaitMessage(containing: "STATUS=migrating 16 MiB") != nil)
        let failed = try notify.awaitMessage(containing: "STATUS=last migration FAILED")
        #expect(failed?.contains("scripted refusal") == true, "\(failed ?? "")")
        #expect(workload.wait(timeoutMilliseconds: 30_000) == 128 + SIGBUS, "the refused migration poisons: \(workload.output)")
        dest.signal(SIGTERM)
        #expect(try notify.awaitMessage(containing: "STOPPING=1") != nil)
        #expect(dest.wait(timeoutMilliseconds: 10_000) == 1, "one migration failed: exit status 1\n\(dest.output)")
    }

    @Test("pagerd dest: while a migration runs, STATUS= with its progress every 2 s, also while its source is stopped (postcopy-paused); every page right in the end")
    func destProgress() throws {
        let scratch = Scratch()
        let notify = try FakeNotifySocket(scratch)
        let served = try LoopbackSource(scratch, sizeMiB: 64, seed: 5)
        let source = served.process
        defer { source.signal(SIGCONT); source.signal(SIGKILL) }
        let socket = scratch.file("uffd.sock")
        let dest = try ChildProcess("/usr/bin/env", ["NOTIFY_SOCKET=\(notify.path)", Binaries.pagerd, "dest", "--connect", served.endpoint, "--once", "--json",
                                                     "--uffd-socket", socket, "--key-file", scratch.keyFile], outputPath: scratch.file("dest.log"))
        _ = try notify.awaitMessage(containing: "READY=1")
        let workload = try ChildProcess(Binaries.workload, ["run", "--socket", socket, "--size-mib", "64", "--access", "random", "--seed", "5"],
                                        outputPath: scratch.file("workload.log"))
        try waitFor(dest, toPrint: "session ")
        source.signal(SIGSTOP)
        let paused = try notify.awaitMessage(containing: "postcopy-paused")
        #expect(paused?.contains("STATUS=migration 1 postcopy-paused: ") == true && paused?.contains("% of 64 MiB local") == true, "\(paused ?? "")")
        source.signal(SIGCONT)
        #expect(workload.wait(timeoutMilliseconds: 60_000) == 0 && workload.output.contains("mismatches=0"), "\(workload.output)\n\(dest.output)")
        #expect(dest.wait(timeoutMilliseconds: 30_000) == 0, "\(dest.output)")
        // --json: the summary is the status document's entry for the migration, one line.
        let line = dest.output.split(separator: "\n").first { $0.hasPrefix("{") } ?? ""
        let summary = try JSONReader.parse(Array(line.utf8), limits: .status)
        #expect(summary["role"]?.stringValue == "dest" && summary["status"]?.stringValue == "completed", "\(line)")
        #expect(summary["outages"]?.uint64 == 1 && summary["resumes"]?.uint64 == 1 && summary["ram"]?["remaining"]?.uint64 == 0, "\(line)")
        #expect(summary["pages-local"]?.uint64 == 16384 && (summary["faults"]?.uint64 ?? 0) > 0, "\(line)")
        // Every page came one way: by a fault's request, a prefetch or the push.
        let arrived = ["demand", "prefetch", "push", "staged"].map { summary["pages-arrived"]?[$0]?.uint64 ?? 0 }
        #expect(arrived.reduce(0, +) == 16384 && arrived[0] > 0 && arrived[3] == 0, "\(line)")
    }

    @Test("pagerd source: READY=1 once listening, STOPPING=1 on SIGTERM, then its summary as STATUS=")
    func source() throws {
        let scratch = Scratch()
        let notify = try FakeNotifySocket(scratch)
        let ram = scratch.file("small.ram")
        try sh(Binaries.workload, "fill", "--file", ram, "--size-mib", "4", "--seed", "3")
        let source = try ChildProcess("/usr/bin/env", ["NOTIFY_SOCKET=\(notify.path)", Binaries.pagerd, "source", "--listen", "127.0.0.1:0",
                                                       "--region", ram, "--key-file", scratch.keyFile], outputPath: scratch.file("source.log"))
        let ready = try notify.awaitMessage(containing: "READY=1")
        #expect(ready?.contains("STATUS=serving 1 region(s) on 127.0.0.1:") == true, "\(ready ?? "")")
        source.signal(SIGTERM)
        #expect(try notify.awaitMessage(containing: "STOPPING=1") != nil)
        #expect(try notify.awaitMessage(containing: "STATUS=stopped: 0 session(s)") != nil)
        #expect(source.wait(timeoutMilliseconds: 10_000) == 0)
    }

    @Test("with $JOURNAL_STREAM naming its stderr, log lines carry syslog priorities; with another stream, the usual format")
    func journalPriorities() throws {
        let scratch = Scratch()
        let ram = scratch.file("small.ram")
        try sh(Binaries.workload, "fill", "--file", ram, "--size-mib", "4", "--seed", "3")
        for matching in [true, false] {
            let log = scratch.file("source-\(matching).log")
            try writeWholeFile(log, "")
            let identity = matching ? try #require(fileIdentity(log)) : "1:1"
            let source = try ChildProcess("/usr/bin/env", ["JOURNAL_STREAM=\(identity)", Binaries.pagerd, "source", "--listen", "127.0.0.1:0",
                                                           "--region", ram, "--key-file", scratch.keyFile], outputPath: log)
            try waitFor(source, toPrint: "serving 1 region")
            source.signal(SIGTERM)
            #expect(source.wait(timeoutMilliseconds: 10_000) == 0)
            let out = source.output
            if matching {
                #expect(out.contains("<6>pagerd.source: serving 1 region(s)") && out.contains("<6>pagerd.source: signal 15: stopping"), "\(out)")
            } else {
                #expect(!out.contains("<6>") && out.contains(" info pagerd.source: "), "\(out)")
            }
        }
    }
}
