import Glibc
import PagerHarness
import PagerKernel
import SystemPackage
import Testing

/// `pagerd qemu-source --follow` / `qemu-dest --follow` under a manager that drives the
/// migration on its own monitors, as libvirt does (Deploy/libvirt/test.sh runs libvirt
/// itself): the test plays the manager here, so that it can also make the operator's mistake
/// libvirt would not let it make, a `cont` of the released source.
@Suite("QEMU with the pager following its manager", .serialized,
       .enabled(if: isRoot, "needs root for network namespaces and userfaultfd"),
       .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)),
       .enabled(if: TestGuest.present, Comment(rawValue: TestGuest.missing)))
struct QEMUFollowTests {
    /// Who is there to kill the released source when the manager's `cont` comes.
    enum AtTheCont: String, CustomTestStringConvertible, CaseIterable {
        /// `pagerd qemu-source` still runs (it waits for QEMU to go): its watch on QMP or the
        /// preload library, whichever sees it first.
        case daemonWatching = "pagerd still watching"
        /// The daemon was killed once the destination had every page: only the preload
        /// library, at the first write to the fenced RAM.
        case daemonGone = "pagerd killed before the cont"
        var testDescription: String { rawValue }
    }

    @Test("a manager migrates the guest (migrate-incoming, migrate, cont on its own QMP sockets), both QEMUs with both preload sockets set (the library picks its mode by -incoming), the pager follows; a cont of the released source finds its RAM fenced: not one byte of it changes and it is killed; the destination's guest keeps verifying its memory",
          arguments: AtTheCont.allCases)
    func followAndFence(_ atTheCont: AtTheCont) throws {
        let hosts = try TwoHosts()
        let scratch = Scratch()
        var run = QEMUMigrationRun(binaries: Binaries.directory, guest: TestGuest.directory!)
        run.ramMiB = 256
        let pagerd = Binaries.directory + "/pagerd", bench = Binaries.directory + "/pager-bench"
        let srcRAM = scratch.file("src.ram"), dstRAM = scratch.file("dst.ram")
        let srcConsole = scratch.file("src.console"), dstConsole = scratch.file("dst.console")
        let uffd = scratch.file("uffd.sock")
        func environment(ram: String, track: String) -> [String] {
            ["LD_PRELOAD=\(QEMUMigrationRun.preloadLibrary(binaries: Binaries.directory))", "PAGER_RAM_PATH=\(ram)",
             "PAGER_UFFD_SOCKET=\(uffd)", "PAGER_TRACK_SOCKET=\(track)", "/usr/bin/qemu-system-x86_64"]
        }
        /// The manager's QMP (the daemons hold the other socket of each QEMU).
        func manager(_ ns: String, _ socket: String, _ command: String, _ arguments: String = "{}") throws -> String {
            try hosts.run(in: ns, bench, ["qmp", "--socket", socket, "--execute", command, "--arguments", arguments])
        }
        func migrationStatus(_ ns: String, _ socket: String) throws -> String {
            try manager(ns, socket, "query-migrate").split(separator: "\n").first { $0.hasPrefix("status=") }.map { String($0.dropFirst(7)) } ?? "none"
        }

        let source = try hosts.spawn(in: hosts.source, "/usr/bin/env",
                                     environment(ram: srcRAM, track: scratch.file("src.track"))
                                         + run.commonArgs(console: srcConsole, qmp: scratch.file("src.qmp"))
                                         + ["-qmp", "unix:\(scratch.file("src.manager")),server=on,wait=off"] + run.ramBackend(srcRAM),
                                     log: scratch.file("src.qemu.log"))
        defer { source.signal(.kill) }
        try waitUntil("the source guest runs two verified passes", seconds: 120) { QEMUMigrationRun.passes((try? readWholeFile(srcConsole)) ?? "") >= 2 }
        let qsource = try hosts.spawn(in: hosts.source, pagerd,
                                      ["qemu-source", "--follow", "--qmp", scratch.file("src.qmp"), "--ram", srcRAM, "--listen", "\(TwoHosts.sourceAddress):7070",
                                       "--track-socket", scratch.file("src.track"), "--key-file", scratch.keyFile], log: scratch.file("qemu-source.log"))
        defer { qsource.signal(.kill) }
        try waitFor(qsource, toPrint: "waiting for a destination pagerd", seconds: 30)
        let qdest = try hosts.spawn(in: hosts.dest, pagerd,
                                    ["qemu-dest", "--follow", "--qmp", scratch.file("dst.qmp"), "--ram", dstRAM, "--connect", "\(TwoHosts.sourceAddress):7070",
                                     "--uffd-socket", uffd, "--key-file", scratch.keyFile], log: scratch.file("qemu-dest.log"))
        defer { qdest.signal(.kill) }
        try waitFor(qdest, toPrint: "waiting for QEMU's handoff")
        let dest = try hosts.spawn(in: hosts.dest, "/usr/bin/env",
                                   environment(ram: dstRAM, track: scratch.file("dst.track"))
                                       + run.commonArgs(console: dstConsole, qmp: scratch.file("dst.qmp"))
                                       + ["-qmp", "unix:\(scratch.file("dst.manager")),server=on,wait=off", "-incoming", "defer"] + run.ramBackend(dstRAM),
                                   log: scratch.file("dst.qemu.log"))
        defer { dest.signal(.kill) }
        try waitFor(dest, toPrint: "handed to the pager", seconds: 30)
        try waitFor(qdest, toPrint: "following the incoming migration", seconds: 30)
        // The source sets x-ignore-shared once the destination's session is there (libvirt's
        // migrate comes after its destination QEMU has started: here, after this line).
        try waitFor(qsource, toPrint: "x-ignore-shared set", seconds: 30)

        // The manager's migration, as libvirt's: incoming, migrate, and cont once completed.
        _ = try manager(hosts.dest, scratch.file("dst.manager"), "migrate-incoming", #"{"uri":"tcp:0.0.0.0:4444"}"#)
        _ = try manager(hosts.source, scratch.file("src.manager"), "migrate", "{\"uri\":\"tcp:\(TwoHosts.destAddress):4444\"}")
        // A query that fails is asked again (a QMP server socket takes one client at a time: a
        // connection right after the last one closed was once reset); a QEMU that is gone
        // fails every one, and the wait ends with the last error and the QEMU's log.
        func waitForCompletion(_ what: String, _ ns: String, _ socket: String, log: String) throws {
            var last = "no answer"
            do {
                try waitUntil(what, seconds: 60) {
                    do { last = try migrationStatus(ns, socket) } catch { last = "\(error)" }
                    return last == "completed"
                }
            } catch {
                throw HarnessError("\(error); the last query: \(last); \(log): \(((try? readWholeFile(log)) ?? "").suffix(1500))")
            }
        }
        try waitForCompletion("the source's migration completes", hosts.source, scratch.file("src.manager"), log: scratch.file("src.qemu.log"))
        try waitForCompletion("the incoming migration completes", hosts.dest, scratch.file("dst.manager"), log: scratch.file("dst.qemu.log"))
        _ = try manager(hosts.dest, scratch.file("dst.manager"), "cont")
        try waitFor(qsource, toPrint: "source RAM fenced", seconds: 30)

        if atTheCont == .daemonGone {
            #expect(qdest.wait(timeoutMilliseconds: 120_000) == 0, "\(qdest.output)")
            qsource.signal(.kill)
            _ = qsource.wait(timeoutMilliseconds: 10_000)
        }
        // The mistake: the released source resumed. Its RAM file is read through a descriptor
        // opened now (pagerd removes the name once the destination has every page).
        let ram = try FileDescriptor.open(srcRAM, .readOnly)
        defer { try? ram.close() }
        let before = try contents(ram, bytes: run.ramMiB << 20)
        let passesBefore = QEMUMigrationRun.passes((try? readWholeFile(srcConsole)) ?? "")
        // The cont itself may fail (QEMU killed first); what it said goes into the message.
        let cont: String
        do { cont = try manager(hosts.source, scratch.file("src.manager"), "cont") } catch { cont = "\(error)" }
        let killed = source.wait(timeoutMilliseconds: 10_000)
        #expect(killed == 128 + SIGKILL, "the resumed source QEMU: \(String(describing: killed)); cont answered: \(cont); \(qsource.output)")
        // Two killers: the preload library at the first write to fenced RAM, pagerd's watch on RESUME.
        let srcLog = (try? readWholeFile(scratch.file("src.qemu.log"))) ?? ""
        let byLibrary = srcLog.contains("pager-preload: FATAL: a write to the fenced guest RAM")
        let byDaemon = qsource.output.contains("the source VM was resumed after its RAM went to the destination: killing QEMU")
        #expect(atTheCont == .daemonGone ? byLibrary && !byDaemon : byLibrary || byDaemon, "\(qsource.output)\n\(srcLog.suffix(2000))")
        print("QEMUFollowTests (\(atTheCont.rawValue)): the resumed source was killed by \([byLibrary ? "the preload library (a write to fenced RAM)" : nil, byDaemon ? "pagerd's watch (RESUME)" : nil].compactMap { $0 }.joined(separator: " and "))")
        #expect(try unchanged(ram, before), "the resumed source changed its guest RAM")
        #expect(QEMUMigrationRun.passes((try? readWholeFile(srcConsole)) ?? "") == passesBefore, "the resumed source's guest ran a pass")

        #expect(qdest.wait(timeoutMilliseconds: 120_000) == 0, "\(qdest.output)")
        if atTheCont == .daemonWatching { #expect(qsource.wait(timeoutMilliseconds: 120_000) == 0, "\(qsource.output)") }
        let after = QEMUMigrationRun.passes((try? readWholeFile(dstConsole)) ?? "")
        try waitUntil("the destination guest runs two more passes with all its RAM local", seconds: 120) {
            QEMUMigrationRun.passes((try? readWholeFile(dstConsole)) ?? "") >= after + 2 || ((try? readWholeFile(dstConsole)) ?? "").contains("MISMATCH")
        }
        let consoles = ((try? readWholeFile(srcConsole)) ?? "") + ((try? readWholeFile(dstConsole)) ?? "")
        #expect(!consoles.contains("MISMATCH"), "\(consoles.suffix(3000))")
        #expect((try? readWholeFile(scratch.file("dst.qemu.log")))?.contains("handed to the pager") == true)
        #expect((try? readWholeFile(scratch.file("src.qemu.log")))?.contains("can be write-tracked and fenced") == true)
        #expect(qdest.output.contains("all RAM local"), "\(qdest.output)")
        if atTheCont == .daemonWatching { #expect(qsource.output.contains("removed \(srcRAM)"), "\(qsource.output)") }
    }

    /// The first `bytes` of `file`.
    func contents(_ file: FileDescriptor, bytes: Int) throws -> [UInt8] {
        var data = [UInt8](repeating: 0, count: bytes)
        var offset = 0
        while offset < bytes {
            let n = try data.withUnsafeMutableBytes {
                try file.read(fromAbsoluteOffset: Int64(offset), into: UnsafeMutableRawBufferPointer(rebasing: $0[offset...]))
            }
            if n == 0 { break }
            offset += n
        }
        return data
    }

    /// Whether `file` still holds `data` (memcmp: a debug build's element loop is slow).
    func unchanged(_ file: FileDescriptor, _ data: [UInt8]) throws -> Bool {
        let now = try contents(file, bytes: data.count)
        return now.withUnsafeBytes { a in data.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, data.count) == 0 } }
    }

    func waitUntil(_ what: String, seconds: Double, _ condition: () throws -> Bool) throws {
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        while try !condition() {
            if monotonicNanoseconds() > deadline { throw HarnessError("timed out: \(what)") }
            sleepMilliseconds(50)
        }
    }
}
