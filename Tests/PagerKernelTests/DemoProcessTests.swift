import PagerKernel
import Testing

@Suite("pagerd demo as a process", .enabled(if: isRootUser, "needs root for userfaultfd"))
struct DemoProcessTests {
    /// `pagerd` and `pager-workload` are built next to the test bundle by `swift build --build-tests`.
    static let pagerd = executableDirectory() + "/pagerd"
    static var built: Bool { isExecutableFile(pagerd) && isExecutableFile(executableDirectory() + "/pager-workload") }

    @Test("pagerd demo runs the real daemons: source, destination and workload processes; every page verified",
          .enabled(if: built, "pagerd or pager-workload not built next to the tests (run swift build --build-tests)"))
    func demo() throws {
        let (status, output) = try runProgram(DemoProcessTests.pagerd, ["demo", "--size-mib", "64", "--access", "random"])
        #expect(status == 0, "\(output)")
        // The lines README quotes, each printed by the real program that did the work.
        #expect(output.contains("workload: ok pages=16384 backing=anon access=random mismatches=0"), "\(output)")
        #expect(output.contains("pagerd dest: 16384 pages (64 MiB) local after"), "\(output)")
        #expect(output.contains("pagerd source: 1 session(s)"), "\(output)")
        #expect(output.contains("pagerd demo: every page of the workload's memory is correct, its writes included"))
    }

    /// `--in-process` ran a second, simpler pager (LocalDemo) that marked a whole run resident
    /// after an "already present" outcome. There is no such mode any more.
    @Test("pagerd demo has no in-process mode with a pager of its own",
          .enabled(if: built, "pagerd not built next to the tests (run swift build --build-tests)"))
    func noSecondPager() throws {
        let (status, output) = try runProgram(DemoProcessTests.pagerd, ["demo", "--in-process", "--size-mib", "4"])
        #expect(status != 0, "\(output)")
        #expect(output.contains("Unknown option '--in-process'"), "\(output)")
    }
}
