import Glibc
import PagerKernel
import Testing

@Suite("pagerd as a process", .enabled(if: isRoot, "needs root for userfaultfd"))
struct DemoProcessTests {
    /// `pagerd` is built next to the test bundle by `swift build --build-tests`.
    static let pagerd = executableDirectory() + "/pagerd"

    @Test("pagerd demo migrates a region lazily, verifies every page and exits 0",
          .enabled(if: access(pagerd, X_OK) == 0, "pagerd not built next to the tests (run swift build --build-tests)"))
    func demo() throws {
        let (status, output) = try runProgram(DemoProcessTests.pagerd, ["demo", "--in-process", "--size-mib", "64", "--seed", "7"])
        #expect(status == 0, "\(output)")
        #expect(output.contains("16384 pages (64 MiB) migrated lazily"))
        #expect(output.contains("every byte of every page matches"))
        #expect(output.contains("workload writes    kept"))
        #expect(output.contains("2048 zero (UFFDIO_ZEROPAGE"))
    }
}
