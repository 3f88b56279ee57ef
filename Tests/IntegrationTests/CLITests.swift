import PagerKernel
import Testing

@Suite("The command line", .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct CLITests {
    @Test("pagerd --version names the release and the wire protocol")
    func version() throws {
        let (status, output) = try runProgram(Binaries.pagerd, ["--version"])
        #expect(status == 0)
        #expect(output.hasPrefix("pagerd ") && output.contains("wire protocol v1"), "\(output)")
    }

    @Test("pagerd guardian is not for people: hidden from the help, and it refuses to start without its daemon's socket")
    func guardianHidden() throws {
        let (status, output) = try runProgram(Binaries.pagerd, ["guardian"])
        #expect(status != 0)
        #expect(output.contains("started by pagerd dest and qemu-dest"), "\(output)")
        let help = try runProgram(Binaries.pagerd, ["--help"]).output
        #expect(!help.contains("guardian"), "\(help)")
    }

    @Test("the QEMU commands drive the migration or follow its manager, one of the two; following the source needs the preload socket (the fence), and pre-copy needs the source to drive",
          arguments: [
              (["qemu-source", "--qmp", "q", "--ram", "r", "--listen", "127.0.0.1:7070"], "give --migrate-to (this command drives the migration) or --follow"),
              (["qemu-source", "--qmp", "q", "--ram", "r", "--listen", "127.0.0.1:7070", "--migrate-to", "tcp:x:1", "--follow", "--track-socket", "t"], "give --migrate-to"),
              (["qemu-source", "--qmp", "q", "--ram", "r", "--listen", "127.0.0.1:7070", "--follow"], "--follow needs --track-socket"),
              (["qemu-dest", "--qmp", "q", "--ram", "r", "--connect", "127.0.0.1:7070", "--uffd-socket", "u"], "give --incoming (this command drives the incoming migration) or --follow"),
              (["qemu-dest", "--qmp", "q", "--ram", "r", "--connect", "127.0.0.1:7070", "--uffd-socket", "u", "--incoming", "tcp:0:1", "--follow"], "give --incoming"),
              (["qemu-dest", "--qmp", "q", "--ram", "r", "--connect", "127.0.0.1:7070", "--uffd-socket", "u", "--follow", "--precopy"], "--precopy needs the source to drive the switch"),
          ])
    func qemuModes(_ arguments: [String], _ message: String) throws {
        // (--insecure-no-auth: the key check comes first, and is not what this is about)
        let (status, output) = try runProgram(Binaries.pagerd, arguments + ["--insecure-no-auth"])
        #expect(status != 0)
        #expect(output.contains(message), "\(output)")
    }

    @Test("help texts wrap as paragraphs: no line broken short in the middle of one", arguments: ["source", "dest", "qemu-source", "qemu-dest", "demo", "keygen"])
    func helpWraps(_ command: String) throws {
        let (status, output) = try runProgram(Binaries.pagerd, [command, "--help"])
        #expect(status == 0)
        let discussion = output.split(separator: "USAGE:", maxSplits: 1).first.map(String.init) ?? ""
        let lines = discussion.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for (i, line) in lines.enumerated() where i + 1 < lines.count {
            let next = lines[i + 1]
            // A short line followed by more of the same paragraph was a hard line break in the
            // source (argument-parser wraps at 80 columns). Indented examples are exempt, and
            // so is the line an example's wrapped tail ends.
            let example = line.hasPrefix("  ") || (i > 0 && lines[i - 1].hasPrefix("  "))
            if !example && !line.isEmpty && !next.isEmpty && !next.hasPrefix("  ") && line.count < 60 && !line.hasPrefix("OVERVIEW") {
                Issue.record("pagerd \(command) --help breaks a paragraph after \"\(line)\"")
            }
        }
    }
}
