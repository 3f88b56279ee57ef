import Glibc
import PagerKernel
import Testing

/// A workload that is not root (as QEMU under libvirt runs as libvirt-qemu, group kvm): it
/// reaches `pagerd dest` through a handoff socket of its group (`--socket-group`), and gets
/// its userfaultfd from /dev/userfaultfd given to that group (the package's udev rule), with
/// `vm.unprivileged_userfaultfd` left at 0.
@Suite("An unprivileged workload, by group permissions", .serialized,
       .enabled(if: isRoot, "needs root to make the group and give /dev/userfaultfd to it"),
       .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)),
       .enabled(if: isExecutableFile("/usr/bin/setpriv") && isExecutableFile("/usr/sbin/groupadd") && isReadableFile("/dev/userfaultfd"),
                "needs setpriv (util-linux), groupadd (passwd) and /dev/userfaultfd (Linux 6.1+)"))
struct PermissionsTests {
    static let group = "pager-test"

    /// Makes the group (removed at the end) and gives /dev/userfaultfd to it, mode 0660, for
    /// `body`; puts the device back as it was (root, 0600) afterwards.
    func withGroupAndDevice(_ body: (_ gid: UInt32) throws -> Void) throws {
        let (made, out) = try runProgram("/usr/sbin/groupadd", ["--system", Self.group])
        #expect(made == 0 || out.contains("already exists"), "\(out)")
        defer { _ = try? runProgram("/usr/sbin/groupdel", [Self.group]) }
        let (_, entry) = try runProgram("/usr/bin/getent", ["group", Self.group])
        let gid = try #require(entry.split(separator: ":").dropFirst(2).first.flatMap { UInt32($0) }, "\(entry)")
        var st = stat()
        #expect(stat("/dev/userfaultfd", &st) == 0)
        defer {
            _ = chown("/dev/userfaultfd", st.st_uid, st.st_gid)
            _ = chmod("/dev/userfaultfd", st.st_mode & 0o7777)
        }
        #expect(chown("/dev/userfaultfd", uid_t.max, gid) == 0 && chmod("/dev/userfaultfd", 0o660) == 0)
        try body(gid)
    }

    @Test("with --socket-group, a workload running as nobody in that group migrates and verifies every page; without it, its handoff is refused and nothing of the source's memory reaches it")
    func unprivilegedWorkload() throws {
        #expect((try? readWholeFile("/proc/sys/vm/unprivileged_userfaultfd"))?.hasPrefix("0") == true, "the test means vm.unprivileged_userfaultfd=0")
        try withGroupAndDevice { gid in
            let scratch = Scratch()
            #expect(chmod(scratch.path, 0o711) == 0, "the workload must reach its socket in the scratch directory")
            let source = try LoopbackSource(scratch, sizeMiB: 64, seed: 9)
            defer { source.process.signal(SIGKILL) }
            let asNobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=\(gid)", "--clear-groups", "--", Binaries.workload]
            for withGroup in [false, true] {
                let socket = scratch.file("uffd-\(withGroup).sock")
                let dest = try ChildProcess(Binaries.pagerd, ["dest", "--connect", source.endpoint, "--uffd-socket", socket, "--once",
                                                              "--key-file", scratch.keyFile] + (withGroup ? ["--socket-group", Self.group] : []),
                                            outputPath: scratch.file("dest-\(withGroup).log"))
                defer { dest.signal(SIGKILL) }
                try waitFor(dest, toPrint: "waiting for userfaultfd handoffs")
                var st = stat()
                #expect(stat(socket, &st) == 0 && st.st_mode & 0o777 == 0o660 && (!withGroup || st.st_gid == gid), "socket mode \(String(st.st_mode & 0o777, radix: 8))")
                let workload = try ChildProcess(asNobody[0], Array(asNobody.dropFirst()) + ["run", "--socket", socket, "--size-mib", "64",
                                                                                             "--access", "random", "--seed", "9"],
                                                outputPath: scratch.file("workload-\(withGroup).log"))
                let status = workload.wait(timeoutMilliseconds: 60_000)
                if withGroup {
                    #expect(status == 0 && workload.output.contains("workload: ok pages=16384") && workload.output.contains("mismatches=0"),
                            "\(workload.output)\n\(dest.output)")
                    #expect(dest.wait(timeoutMilliseconds: 30_000) == 0, "\(dest.output)")
                } else {
                    #expect(status != 0 && workload.output.contains("Permission denied"), "\(workload.output)")
                    #expect(!dest.output.contains("handoff:"), "no handoff was taken: \(dest.output)")
                }
            }
        }
    }
}
