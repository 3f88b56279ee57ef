import Glibc
import PagerKernel

/// The main job's embedded default: a real migration between processes on this machine.
/// `pagerd source` serves a 1 GiB file with known content, `pagerd dest` receives a
/// workload's userfaultfd in Firecracker's format, and the workload (another process) reads
/// and writes its memory in random order while it arrives, then checks every page.
public struct ProcessDemo {
    public var sizeMiB: Int
    public var access: String
    public var binaries: String

    public init(sizeMiB: Int, access: String, binaries: String = executableDirectory()) {
        self.sizeMiB = sizeMiB
        self.access = access
        self.binaries = binaries
    }

    /// Runs the three processes; returns their output and whether all succeeded.
    public func run(log: (String) -> Void) throws -> (ok: Bool, report: String) {
        let scratch = Scratch()
        let ram = scratch.file("vm.ram")
        let pagerd = binaries + "/pagerd", workload = binaries + "/pager-workload"
        log("writing \(sizeMiB) MiB of known content to \(ram) (one page in 16 left as a hole, one written with zeros)")
        try sh(workload, "fill", "--file", ram, "--size-mib", "\(sizeMiB)", "--seed", "42")
        let port = 20_000 + Int(getpid() % 20_000)
        let source = try ChildProcess(pagerd, ["source", "--listen", "127.0.0.1:\(port)", "--region", ram], outputPath: scratch.file("source.log"))
        defer { source.signal(SIGTERM); source.wait(timeoutMilliseconds: 10_000) }
        try waitFor(source, toPrint: "serving 1 region")
        log("pagerd source is serving it on 127.0.0.1:\(port)")
        let socket = scratch.file("uffd.sock")
        let dest = try ChildProcess(pagerd, ["dest", "--connect", "127.0.0.1:\(port)", "--uffd-socket", socket, "--once"], outputPath: scratch.file("dest.log"))
        try waitFor(dest, toPrint: "waiting for userfaultfd handoffs")
        log("pagerd dest waits for a userfaultfd on \(socket); starting the workload (\(access) access, writes to every 13th page)")
        let w = try ChildProcess(workload, ["run", "--socket", socket, "--size-mib", "\(sizeMiB)", "--seed", "42", "--access", access, "--write-every", "13"],
                                 outputPath: scratch.file("workload.log"))
        let ws = w.wait(timeoutMilliseconds: 300_000)
        let ds = dest.wait(timeoutMilliseconds: 60_000)
        source.signal(SIGTERM)
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
}
