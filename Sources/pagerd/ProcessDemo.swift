import PagerKernel
import PagerTrust

/// `pagerd demo`: a real migration between processes on this machine, through the real
/// daemons and nothing else. `pagerd source` serves a file with known content, `pagerd dest`
/// receives a workload's userfaultfd in Firecracker's format, and the workload (another
/// process, `pager-workload run`) reads and writes its memory in random order while it
/// arrives, then checks every page.
///
/// It uses no test harness (the shipped daemon does not link one): its own directory for the
/// file, the logs and the socket, and the children's output to know when each is ready.
struct ProcessDemo {
    var sizeMiB: Int
    var access: String
    var binaries: String = executableDirectory()

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Runs the three processes; returns their output and whether all succeeded.
    func run(log: (String) -> Void) throws -> (ok: Bool, report: String) {
        let directory = try TemporaryDirectory(template: "/dev/shm/pagerd-demo-XXXXXX")
        let ram = directory.file("vm.ram")
        let pagerd = binaries + "/pagerd", workload = binaries + "/pager-workload"
        log("writing \(sizeMiB) MiB of known content to \(ram) (one page in 16 left as a hole, one written with zeros)")
        let (filled, fillOutput) = try runProgram(workload, ["fill", "--file", ram, "--size-mib", "\(sizeMiB)", "--seed", "42"])
        guard filled == 0 else { throw Failure(description: "\(workload) fill exited \(filled): \(fillOutput)") }
        // A key made for this run only, as an operator would make one with `pagerd keygen`:
        // the daemons authenticate each other, as they do everywhere.
        let keys = directory.file("keys.psk")
        try writeNewSecretFile(keys, contents: KeyRing.formatted([PresharedKey(identity: "demo", secret: secureRandomBytes(32))]))
        log("made a key for this run only (\(keys), mode 0600): the daemons authenticate each other with it")
        let port = 20_000 + Int(processID() % 20_000)
        let source = try ChildProcess(pagerd, ["source", "--listen", "127.0.0.1:\(port)", "--region", ram, "--key-file", keys],
                                      outputPath: directory.file("source.log"))
        defer { source.signal(.terminate); source.wait(timeoutMilliseconds: 10_000) }
        try Self.wait(for: source, toPrint: "serving 1 region")
        log("pagerd source is serving it on 127.0.0.1:\(port)")
        let socket = directory.file("uffd.sock")
        let dest = try ChildProcess(pagerd, ["dest", "--connect", "127.0.0.1:\(port)", "--uffd-socket", socket, "--once", "--key-file", keys], outputPath: directory.file("dest.log"))
        try Self.wait(for: dest, toPrint: "waiting for userfaultfd handoffs")
        log("pagerd dest waits for a userfaultfd on \(socket); starting the workload (\(access) access, writes to every 13th page)")
        let w = try ChildProcess(workload, ["run", "--socket", socket, "--size-mib", "\(sizeMiB)", "--seed", "42", "--access", access, "--write-every", "13"],
                                 outputPath: directory.file("workload.log"))
        let ws = w.wait(timeoutMilliseconds: 300_000)
        let ds = dest.wait(timeoutMilliseconds: 60_000)
        source.signal(.terminate)
        source.wait(timeoutMilliseconds: 10_000)
        func body(_ text: String) -> String {
            text.split(separator: "\n").filter { !$0.contains(" info ") }.map { "  " + $0 }.joined(separator: "\n")
        }
        let report = """
        workload (exit \(ws.map(String.init) ?? "timeout")):
        \(body(w.output))
        destination (exit \(ds.map(String.init) ?? "timeout")):
        \(body(dest.output))
        source:
        \(body(source.output))
        """
        return (ws == 0 && ds == 0 && w.output.contains("workload: ok"), report)
    }

    /// Waits until `process` prints `text`: its exit is an event (pidfd), its log is read
    /// between 5 ms waits for it. Fails if it exits first or after `seconds`.
    static func wait(for process: ChildProcess, toPrint text: String, seconds: Double = 10) throws {
        let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
        while monotonicNanoseconds() < deadline {
            if process.output.contains(text) { return }
            if let status = process.wait(timeoutMilliseconds: 5) {
                throw Failure(description: "\(process.outputPath): exited \(status) before printing \"\(text)\": \(process.output)")
            }
        }
        throw Failure(description: "\(process.outputPath): no \"\(text)\" after \(seconds) s: \(process.output)")
    }
}
