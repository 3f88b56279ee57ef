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
