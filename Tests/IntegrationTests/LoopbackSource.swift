import PagerKernel
import Testing

/// `pagerd source` on loopback, on a port the kernel picks, serving a file of `sizeMiB` with
/// the workload's known content (seed `seed`), keyed with the scratch directory's test key.
struct LoopbackSource {
    let process: ChildProcess
    let port: String
    let ram: String

    init(_ scratch: Scratch, sizeMiB: Int, seed: Int, environment: [String] = []) throws {
        ram = scratch.file("vm.ram")
        try sh(Binaries.workload, "fill", "--file", ram, "--size-mib", "\(sizeMiB)", "--seed", "\(seed)")
        process = try ChildProcess("/usr/bin/env", environment + [Binaries.pagerd, "source", "--listen", "127.0.0.1:0", "--region", ram,
                                                                  "--key-file", scratch.keyFile], outputPath: scratch.file("source.log"))
        try waitFor(process, toPrint: "serving 1 region")
        let output = process.output
        port = try #require(output.split(separator: "\n").lazy.compactMap { line -> String? in
            line.firstRange(of: "127.0.0.1:").map { String(line[$0.upperBound...].prefix { $0.isNumber }) }
        }.first, "no port in: \(output)")
    }

    var endpoint: String { "127.0.0.1:\(port)" }
}
