import PagerKernel
import PagerOperationsCore
import Synchronization
import SystemPackage

/// `--metrics-listen ADDR:PORT`: answers `GET /metrics` with the daemon's metrics in the text
/// exposition format, over HTTP/1.1 with `Connection: close`. One thread, a connection at a
/// time, each given 2 s to send its request: a scraper is one client every few seconds, and
/// nothing here is on the page path (the metrics are read from atomics and snapshots).
public final class MetricsEndpoint: @unchecked Sendable {
    private let listener: TCPListener
    private let metrics: @Sendable () -> String
    private var thread: KernelThread?

    public var endpoint: Endpoint { listener.endpoint }

    public init(listen: Endpoint, metrics: @escaping @Sendable () -> String) throws(KernelError) {
        listener = try TCPListener(listen, backlog: 64)
        self.metrics = metrics
    }

    public func start() throws(KernelError) {
        thread = try KernelThread(name: "metrics-http") { [self] in serve() }
    }

    public func stop() {
        stopping.store(true, ordering: .releasing)
        listener.shutdown()
        thread?.join()
        thread = nil
    }

    private let stopping = Atomic<Bool>(false)

    private func serve() {
        while !stopping.load(ordering: .acquiring) {
            guard let connection = try? listener.accept() else {
                // A full descriptor table or a passing kernel shortage: try again shortly.
                if !stopping.load(ordering: .acquiring) { sleepMilliseconds(100) }
                continue
            }
            connection.setSendTimeout(milliseconds: 2_000)
            let reply = MetricsRequest.response(to: MetricsEndpoint.readRequest(connection, until: .after(nanoseconds: 2_000_000_000)),
                                                metrics: metrics)
            let bytes = Array(reply.utf8)
            _ = try? bytes.withUnsafeBytes { try connection.writeAll([$0]) }
            connection.shutdown()
        }
    }

    /// The request head (up to the blank line, at most 8 KiB), or nil if none came whole
    /// before `deadline` (one deadline for the whole head: a client trickling bytes does not
    /// hold the thread longer).
    static func readRequest(_ connection: TCPSocket, until deadline: Deadline) -> [UInt8]? {
        var head: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 2048)
        while head.count < MetricsRequest.maxHead {
            guard (try? connection.waitReadable(until: deadline)) == true else { return nil }
            let n = (try? buffer.withUnsafeMutableBytes { try connection.readSome(into: $0.baseAddress!, count: $0.count) }) ?? 0
            if n <= 0 { return nil }
            head += buffer[..<n]
            if let end = MetricsRequest.headEnd(head) { return Array(head[..<end]) }
        }
        return nil
    }
}

/// node_exporter's textfile collector (`--metrics-textfile PATH`): the metrics written to a
/// temporary file next to PATH and renamed over it, so the collector never reads half a file.
public enum MetricsTextfile {
    public static func write(_ text: String, to path: String) throws(KernelError) {
        let temporary = path + ".\(processID()).tmp"
        try writeWholeFile(temporary, text)
        do { try renameFile(temporary, to: path) } catch {
            removeFile(temporary)
            throw error
        }
    }
}
