import PagerKernel
import Testing

/// What the shipped daemon links, and which modules make system calls: checked on the
/// release binary and the source tree, since no compiler error catches either.
@Suite("linkage")
struct LinkageTests {
    static let root = "/" + String(#filePath).split(separator: "/").dropLast(3).joined(separator: "/")
    static let nm = "/usr/bin/nm"

    @Test("pagerd links no test harness, workload, benchmark kit or histogram library",
          .enabled(if: isExecutableFile(Binaries.pagerd), "pagerd not built in release: run swift build -c release"),
          .enabled(if: isExecutableFile(nm), "nm not installed (binutils)"))
    func pagerdHasNoHarness() throws {
        let (status, symbols) = try runProgram(Self.nm, [Binaries.pagerd])
        #expect(status == 0, "nm failed: \(symbols.prefix(500))")
        let lines = symbols.split(separator: "\n")
        #expect(lines.count > 1000, "nm listed too few symbols to mean anything (stripped binary?)")
        // Type and module names as they appear in mangled Swift symbols, case-sensitive: a
        // `scratch:` parameter label of PagerSource's ServedRegion is not the harness's Scratch.
        // hdrhistogram-swift's module is `Histogram`: its symbols begin `$s9Histogram` (the
        // word alone also names PagerCore's LatencyHistogram, which pagerd does link).
        for name in ["TwoHosts", "Scratch", "QEMUMigrationRun", "$s9Histogram", "PagerHarness", "PagerWorkloads", "PagerBenchKit",
                     "MigrationWorkload", "BenchSuite", "LocalDemo"] {
            let hits = lines.filter { $0.contains(name) }
            #expect(hits.isEmpty, "pagerd links \(name): \(hits.prefix(3))")
        }
    }

    @Test("the preload library that ships (plain C, Deploy/build-preload.sh) needs no Swift or C++ runtime: a QEMU process can load it on a host without Swift",
          .enabled(if: isReadableFile(Binaries.directory + "/plain/libpager-preload.so"), "not built: bash Deploy/build-preload.sh \(Binaries.directory)/plain/libpager-preload.so (Deploy/test.sh does)"))
    func preloadIsPlainC() throws {
        let (status, output) = try runProgram("/usr/bin/readelf", ["-d", Binaries.directory + "/plain/libpager-preload.so"])
        #expect(status == 0, "\(output)")
        let needed = output.split(separator: "\n").filter { $0.contains("(NEEDED)") }
        #expect(!needed.isEmpty && needed.allSatisfy { $0.contains("libc.so") || $0.contains("ld-linux") }, "\(needed)")
    }

    @Test("only PagerKernel imports Glibc among the sources")
    func glibcOnlyInKernel() throws {
        let (status, output) = try runProgram("/bin/grep", ["-rl", "--include=*.swift", "^import " + "Glibc", Self.root + "/Sources"])
        #expect(status == 0 || status == 1, "grep failed: \(output)")
        let offenders = output.split(separator: "\n").filter { !$0.hasPrefix(Self.root + "/Sources/PagerKernel/") }
        #expect(offenders.isEmpty, "Glibc imported outside PagerKernel: \(offenders)")
    }
}
