import PagerKernel
import Synchronization
import SystemPackage

/// The control socket (`--control-socket PATH`): a Unix stream socket on which a client
/// sends one request line and reads one answer until the daemon closes the connection. The
/// request `status` answers the daemon's status document (JSON, one line). One thread serves
/// it, a connection at a time, each bounded by a 1 s timeout for its request: nothing here
/// is on the page path, and a client that stalls delays only other clients.
///
/// The socket file is made with mode 0660 (owner and group, `--socket-group` if given): the status says which hosts and
/// sessions a daemon serves, never any memory.
public final class ControlServer: @unchecked Sendable {
    public let path: String
    private let listener: FileDescriptor
    private let answer: @Sendable (String) -> String?
    private var thread: KernelThread?

    /// Listens at `path` (a stale socket file there is replaced). `answer` maps a request line
    /// (without its newline) to the answer, nil for a request it does not know.
    public init(path: String, group: String? = nil, answer: @escaping @Sendable (String) -> String?) throws(KernelError) {
        self.path = path
        self.answer = answer
        listener = try UnixSocket.listen(path: path, group: group)
    }

    /// Serves on a thread of its own until ``stop()``.
    public func start() throws(KernelError) {
        thread = try KernelThread(name: "control-socket") { [self] in serve() }
    }

    /// Stops serving and removes the socket file.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        _ = shutdownSocket(listener)
        thread?.join()
        thread = nil
        removeFile(path)
        try? listener.close()
    }

    private let stopping = Atomic<Bool>(false)

    private func serve() {
        while !stopping.load(ordering: .acquiring) {
            guard let connection = try? UnixSocket.accept(listener) else {
                // A full descriptor table or a passing kernel shortage: try again shortly.
                if !stopping.load(ordering: .acquiring) { sleepMilliseconds(100) }
                continue
            }
            // An answer the client does not read gives up after 2 s, not never.
            TCPSocket.setSendTimeout(connection, milliseconds: 2_000)
            respond(on: connection)
            try? connection.close()
        }
    }

    private func respond(on connection: FileDescriptor) {
        guard let request = ControlServer.readLine(connection, until: .after(nanoseconds: 1_000_000_000)) else { return }
        let reply = answer(request) ?? "error: unknown request \"\(request.prefix(64))\" (known: status)"
        try? UnixSocket.send(connection, bytes: Array((reply + "\n").utf8), descriptors: [])
    }

    /// One line of at most 1 KiB (without its newline), or nil if none came before `deadline`.
    static func readLine(_ connection: FileDescriptor, until deadline: Deadline) -> String? {
        var bytes: [UInt8] = []
        while bytes.count < 1024 {
            guard (try? UnixSocket.waitReadable(connection, until: deadline)) == true,
                  let chunk = try? UnixSocket.readAvailable(connection, maxBytes: 1024 - bytes.count) else { return nil }
            if chunk.isEmpty { break }
            bytes += chunk
            if let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) { return String(decoding: bytes[..<newline], as: UTF8.self) }
        }
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }
}

/// What ``ControlClient/request(_:path:timeoutMilliseconds:)`` can fail with.
public struct ControlError: Error, CustomStringConvertible {
    public let description: String
}

/// `pagerd status`'s side of the control socket.
public enum ControlClient {
    /// Sends `request` and returns the whole answer (without its last newline).
    public static func request(_ request: String, path: String, timeoutMilliseconds: Int = 2_000) throws -> String {
        let socket: FileDescriptor
        do { socket = try UnixSocket.connect(path: path) } catch {
            throw ControlError(description: "cannot reach the daemon's control socket \(path): \(error.errno) (is a daemon running with --control-socket \(path)?)")
        }
        defer { try? socket.close() }
        try UnixSocket.send(socket, bytes: Array((request + "\n").utf8), descriptors: [])
        var answer: [UInt8] = []
        let deadline = Deadline.after(nanoseconds: UInt64(timeoutMilliseconds) * 1_000_000)
        while true {
            guard try UnixSocket.waitReadable(socket, until: deadline) else {
                throw ControlError(description: "the daemon at \(path) did not answer within \(deadline.allowedDescription)")
            }
            guard let chunk = try UnixSocket.readAvailable(socket, maxBytes: 65536) else { continue }
            if chunk.isEmpty { break }
            answer += chunk
            guard answer.count <= 16 << 20 else { throw ControlError(description: "the answer from \(path) is over 16 MiB") }
        }
        if answer.last == UInt8(ascii: "\n") { answer.removeLast() }
        return String(decoding: answer, as: UTF8.self)
    }
}
