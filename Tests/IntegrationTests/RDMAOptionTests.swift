import PagerHarness
import PagerKernel
import Testing

/// The RDMA options of the four daemons, as the packaged (default) build has them: they exist,
/// and are refused at once with what to do, before anything is opened. The trait build's
/// refusals of --insecure-no-auth, --encrypt and pre-copy run in the guest (Deploy/rdma-test.sh
/// has that build); `validateRDMA` is one function for all four.
@Suite("RDMA options without the RDMA trait", .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct RDMAOptionTests {
    static let commands: [[String]] = [
        DaemonKeyTests.arguments("source") + ["--rdma"],
        DaemonKeyTests.arguments("dest") + ["--transport", "rdma"],
        DaemonKeyTests.arguments("qemu-source") + ["--rdma"],
        DaemonKeyTests.arguments("qemu-dest") + ["--transport", "rdma"],
    ]

    @Test("each daemon's RDMA option says this pagerd was built without RDMA and how to build it, exit 64", arguments: commands)
    func notBuilt(_ command: [String]) throws {
        let scratch = Scratch()
        let (status, output) = try runProgram(Binaries.pagerd, command + ["--key-file", scratch.keyFile])
        #expect(status == 64, "\(output)")
        #expect(output.contains("built without RDMA") && output.contains("--traits RDMA"), "\(output)")
    }

    @Test("--rdma-device without --transport rdma is refused, exit 64", arguments: ["dest", "qemu-dest"])
    func deviceNeedsTransport(_ daemon: String) throws {
        let scratch = Scratch()
        let (status, output) = try runProgram(Binaries.pagerd, DaemonKeyTests.arguments(daemon) + ["--rdma-device", "rxe0", "--key-file", scratch.keyFile])
        #expect(status == 64 && output.contains("--rdma-device needs --transport rdma"), "\(output)")
    }
}
