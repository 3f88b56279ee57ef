import Glibc
import PagerHarness
import PagerKernel
import Testing

/// Secure by default: every daemon refuses to start without a key or the explicit insecure
/// flag, and refuses a key file anyone else could read, before it opens a socket.
@Suite("Daemons and their keys", .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct DaemonKeyTests {
    /// Each daemon's required arguments except the key (nothing here is ever reached: the
    /// key is checked first).
    static let daemons: [(String, [String])] = [
        ("source", ["--listen", "127.0.0.1:0", "--region", "/nonexistent.ram"]),
        ("dest", ["--connect", "127.0.0.1:9", "--uffd-socket", "/nonexistent/uffd.sock"]),
        ("qemu-source", ["--qmp", "/nonexistent.qmp", "--ram", "/nonexistent.ram", "--listen", "127.0.0.1:0", "--migrate-to", "tcp:127.0.0.1:1"]),
        ("qemu-dest", ["--qmp", "/nonexistent.qmp", "--ram", "/nonexistent.ram", "--connect", "127.0.0.1:9",
                       "--uffd-socket", "/nonexistent/uffd.sock", "--incoming", "tcp:127.0.0.1:0"]),
    ]
    static let names = daemons.map(\.0)

    static func arguments(_ daemon: String) -> [String] {
        [daemon] + daemons.first { $0.0 == daemon }!.1
    }

    @Test("without --key-file or --insecure-no-auth a daemon does not start, and says how to make a key", arguments: names)
    func noKey(_ daemon: String) throws {
        let (status, output) = try runProgram(Binaries.pagerd, Self.arguments(daemon))
        #expect(status == 64, "\(output)")
        #expect(output.contains("no key: give --key-file PATH") && output.contains("pagerd keygen"), "\(output)")
    }

    @Test("--key-file and --insecure-no-auth together are refused", arguments: names)
    func both(_ daemon: String) throws {
        let scratch = Scratch()
        let (status, output) = try runProgram(Binaries.pagerd, Self.arguments(daemon) + ["--key-file", scratch.keyFile, "--insecure-no-auth"])
        #expect(status == 64 && output.contains("not both"), "\(output)")
    }

    @Test("a key file readable by others, a symbolic link, or a short key: the daemon names the problem and exits 77 (EX_NOPERM) or 78 (EX_CONFIG)", arguments: names)
    func unsafeKeyFiles(_ daemon: String) throws {
        let scratch = Scratch()
        let open = scratch.file("open.psk")
        try TestKeys.writeFile(open)
        #expect(chmod(open, 0o644) == 0)
        let link = scratch.file("link.psk")
        #expect(symlink(scratch.keyFile, link) == 0)
        let short = scratch.file("short.psk")
        try writeNewSecretFile(short, contents: Array("pager:0011223344556677\n".utf8))
        for (path, reason, exit) in [(open, "group or others", Int32(77)), (link, "symbolic link", 77), (short, "at least 32", 78),
                                     (scratch.file("absent.psk"), "cannot open", 78)] {
            let (status, output) = try runProgram(Binaries.pagerd, Self.arguments(daemon) + ["--key-file", path])
            #expect(status == exit, "\(path): \(output)")
            #expect(output.contains("key file") && output.contains(reason), "\(path): \(output)")
        }
    }

    /// Destinations warn at start; a source warns once it listens, naming the address
    /// (AuthenticationTests' `mismatchedModes` runs one).
    @Test("--insecure-no-auth is loud", arguments: ["dest", "qemu-dest"])
    func insecureWarns(_ daemon: String) throws {
        let (_, output) = try runProgram(Binaries.pagerd, Self.arguments(daemon) + ["--insecure-no-auth"])
        #expect(output.contains("WARNING: --insecure-no-auth"), "\(output)")
    }
}
