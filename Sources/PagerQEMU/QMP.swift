import PagerHandoff
import PagerKernel
import SystemPackage

/// Why talking to QEMU failed.
public struct QEMUError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A QEMU Machine Protocol client on QEMU's `-qmp unix:PATH,server=on,wait=off` socket:
/// newline-delimited JSON; commands answered with `return` or `error`, events interleaved.
public final class QMP {
    private let socket: FileDescriptor
    private var buffer: [UInt8] = []
    private var events: [JSONValue] = []
    /// QEMU's messages are larger than a handoff's (a `query-*` reply can list much) but
    /// come from the local QEMU we started: generous bounds, there only so a runaway line
    /// cannot grow without limit.
    static let limits = JSONLimits(maxBytes: 16 << 20, maxDepth: 64)
    /// The QEMU process at the other end (`SO_PEERCRED`).
    public let pid: Int32

    /// Connects (retrying while the socket does not exist yet, up to `timeoutMilliseconds`),
    /// reads the greeting and leaves capabilities negotiation mode.
    public init(path: String, timeoutMilliseconds: Int = 30_000) throws {
        let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        var connected: FileDescriptor?
        var lastError = ""
        while connected == nil {
            do { connected = try UnixSocket.connect(path: path) } catch {
                lastError = "\(error)"
                if monotonicNanoseconds() > deadline { throw QEMUError("QEMU's QMP socket \(path) does not answer: \(lastError)") }
                sleepMilliseconds(20)
            }
        }
        socket = connected!
        pid = try UnixSocket.peerProcess(socket)
        guard let greeting = try readMessage(timeoutMilliseconds: 10_000) else { throw QEMUError("\(path): no QMP greeting within 10 s") }
        guard greeting["QMP"] != nil else { throw QEMUError("\(path) did not greet with QMP: \(greeting)") }
        _ = try execute("qmp_capabilities")
    }

    deinit { try? socket.close() }

    /// Runs `command` with `arguments` (a JSON object's text) and returns its `return` value.
    @discardableResult
    public func execute(_ command: String, _ arguments: String = "{}", timeoutMilliseconds: Int = 30_000) throws -> JSONValue {
        let parsedArguments: JSONValue
        do { parsedArguments = try JSONReader.parse(Array(arguments.utf8), limits: QMP.limits) } catch {
            throw QEMUError("QMP \(command): arguments are not JSON (\(error)): \(arguments)")
        }
        var line = JSONWriter.encode(.object([("execute", .string(command)), ("arguments", parsedArguments)]))
        line.append(0x0A)
        try UnixSocket.send(socket, bytes: line, descriptors: [])
        let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        while true {
            let now = monotonicNanoseconds()
            guard now < deadline else { throw QEMUError("QMP \(command): no answer within \(timeoutMilliseconds) ms") }
            guard let m = try readMessage(timeoutMilliseconds: Int((deadline - now) / 1_000_000)) else { continue }
            if m["event"] != nil { keep(m); continue }
            if let e = m["error"] { throw QEMUError("QMP \(command) failed: \(describe(e))") }
            if let r = m["return"] { return r }
        }
    }

    /// Waits for the next event named in `names` (events seen earlier included); nil on timeout.
    public func waitForEvent(_ names: Set<String>, timeoutMilliseconds: Int) throws -> JSONValue? {
        let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        while true {
            if let i = events.firstIndex(where: { if case .string(let n)? = $0["event"] { names.contains(n) } else { false } }) {
                return events.remove(at: i)
            }
            let now = monotonicNanoseconds()
            guard now < deadline else { return nil }
            if let m = try readMessage(timeoutMilliseconds: Int((deadline - now) / 1_000_000)), m["event"] != nil {
                keep(m)
            }
        }
    }

    /// Forgets the events seen so far (a watch from now on must not act on an old one).
    public func discardEvents() { events.removeAll() }

    /// The events kept for ``waitForEvent(_:timeoutMilliseconds:)``: the newest 256 (nobody
    /// may ask for some kinds for hours).
    private func keep(_ event: JSONValue) {
        if events.count >= 256 { events.removeFirst(events.count - 255) }
        events.append(event)
    }

    /// The status of the current migration (`query-migrate`), e.g. "active", "completed".
    public func migrationStatus() throws -> String {
        if case .string(let s)? = try execute("query-migrate")["status"] { return s }
        return "none"
    }

    /// The next message, or nil when none came within the timeout.
    private func readMessage(timeoutMilliseconds: Int) throws -> JSONValue? {
        let deadline = monotonicNanoseconds() + UInt64(max(0, timeoutMilliseconds)) * 1_000_000
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x0D }) { continue }
                return try JSONReader.parse(line, limits: QMP.limits)
            }
            let now = monotonicNanoseconds()
            guard now < deadline, try UnixSocket.waitReadable(socket, timeoutMilliseconds: Int32(clamping: (deadline - now) / 1_000_000)) else {
                return nil
            }
            guard let bytes = try UnixSocket.readAvailable(socket, maxBytes: 65536) else { continue }
            if bytes.isEmpty { throw QEMUError("QMP: QEMU closed its socket (it exited?)") }
            buffer += bytes
        }
    }
}

/// A short text for a JSON value (QMP errors, events).
public func describe(_ v: JSONValue) -> String {
    switch v {
    case .string(let s): return s
    case .number(let n): return n
    case .bool(let b): return "\(b)"
    case .null: return "null"
    case .array(let a): return "[" + a.map(describe).joined(separator: ", ") + "]"
    case .object(let o): return "{" + o.map { "\($0.0): \(describe($0.1))" }.joined(separator: ", ") + "}"
    }
}
