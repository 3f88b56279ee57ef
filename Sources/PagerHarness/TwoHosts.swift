import PagerKernel
import Synchronization

/// Two "hosts": network namespaces joined by a veth pair, removed on deinit.
public final class TwoHosts {
    public let source: String
    public let dest: String
    public let sourceDevice: String
    public static let sourceAddress = "198.18.0.1" // RFC 2544 benchmarking range, only inside our namespaces
    public static let destAddress = "198.18.0.2"
    private static let instances = Atomic<Int>(0)
    /// CPUs given to each "host" (a `taskset -c` list), or nil when both share every CPU.
    public let sourceCPUs: String?
    public let destCPUs: String?

    /// `splitCPUs`: give each namespace its own half of the CPUs, as two machines would have.
    /// Without it, the scheduler puts a source thread and a destination thread on one CPU
    /// whenever one wakes the other, and each side's costs are charged to the other.
    public init(splitCPUs: Bool = false) throws {
        let cpus = onlineCPUCount()
        if splitCPUs && cpus >= 2 {
            destCPUs = "0-\(cpus / 2 - 1)"
            sourceCPUs = "\(cpus / 2)-\(cpus - 1)"
        } else {
            destCPUs = nil
            sourceCPUs = nil
        }
        // Unique per instance, not just per process: test suites run side by side in one
        // process, and two pairs with one name would delete each other's namespaces.
        let id = Int(processID() % 10_000) * 100 + TwoHosts.instances.wrappingAdd(1, ordering: .relaxed).oldValue % 100
        source = "pgs\(id)"
        dest = "pgd\(id)"
        sourceDevice = "vs\(id)"
        let destDevice = "vd\(id)"
        _ = try? runProgram("/usr/sbin/ip", ["netns", "del", source])
        _ = try? runProgram("/usr/sbin/ip", ["netns", "del", dest])
        try sh("/usr/sbin/ip", "netns", "add", source)
        try sh("/usr/sbin/ip", "netns", "add", dest)
        try sh("/usr/sbin/ip", "link", "add", sourceDevice, "type", "veth", "peer", "name", destDevice)
        try sh("/usr/sbin/ip", "link", "set", sourceDevice, "netns", source)
        try sh("/usr/sbin/ip", "link", "set", destDevice, "netns", dest)
        for (ns, dev, addr) in [(source, sourceDevice, TwoHosts.sourceAddress), (dest, destDevice, TwoHosts.destAddress)] {
            try sh("/usr/sbin/ip", "-n", ns, "addr", "add", "\(addr)/24", "dev", dev)
            try sh("/usr/sbin/ip", "-n", ns, "link", "set", dev, "up")
            try sh("/usr/sbin/ip", "-n", ns, "link", "set", "lo", "up")
        }
    }

    deinit {
        _ = try? runProgram("/usr/sbin/ip", ["netns", "del", source])
        _ = try? runProgram("/usr/sbin/ip", ["netns", "del", dest])
    }

    /// Limits the source's sending rate (tbf), e.g. "200mbit".
    public func shapeSource(rate: String) throws {
        try sh("/usr/sbin/ip", "netns", "exec", source, "tc", "qdisc", "add", "dev", sourceDevice, "root", "tbf",
               "rate", rate, "burst", "256kb", "latency", "100ms")
    }

    /// Removes the shaping of ``shapeSource(rate:)``.
    public func unshapeSource() throws {
        try sh("/usr/sbin/ip", "netns", "exec", source, "tc", "qdisc", "del", "dev", sourceDevice, "root")
    }

    /// Starts `binary args` inside namespace `ns` (on its CPUs when they are split).
    public func spawn(in ns: String, _ binary: String, _ args: [String], log: String) throws -> ChildProcess {
        let command = self.command(in: ns, binary, args)
        return try ChildProcess(command[0], Array(command.dropFirst()), outputPath: log)
    }

    /// Runs `binary args` to completion inside namespace `ns` and requires success.
    public func run(in ns: String, _ binary: String, _ args: [String]) throws -> String {
        let command = self.command(in: ns, binary, args)
        let (status, output) = try runProgram(command[0], Array(command.dropFirst()))
        guard status == 0 else { throw HarnessError("\(command.joined(separator: " ")) exited \(status): \(output)") }
        return output
    }

    private func command(in ns: String, _ binary: String, _ args: [String]) -> [String] {
        let cpus = ns == source ? sourceCPUs : ns == dest ? destCPUs : nil
        return ["/usr/sbin/ip", "netns", "exec", ns] + (cpus.map { ["/usr/bin/taskset", "-c", $0] } ?? []) + [binary] + args
    }
}
