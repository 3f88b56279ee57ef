import PagerDestination
import PagerHandoff
import PagerKernel
import SystemPackage

/// The source QEMU's preload library on its PAGER_TRACK_SOCKET (see preload.c): a connection
/// sends one request byte and gets one answer.
enum SourcePreload {
    /// Write tracking for pre-copy rounds: a WP-async userfaultfd over the RAM mapping.
    static let tracking: UInt8 = 0x54 // "T"
    /// The fence: the RAM mapping write-protected for good, the descriptor kept by QEMU.
    static let fence: UInt8 = 0x46 // "F"

    /// Connects to `socket` and sends `request`; the connection must belong to the QEMU with
    /// process id `qemu` (its QMP socket's peer), or a stray socket could answer for it.
    static func connect(_ socket: String, request: UInt8, qemu: Int32) throws -> FileDescriptor {
        let connection = try UnixSocket.connect(path: socket)
        do {
            guard try UnixSocket.peerProcess(connection) == qemu else {
                throw QEMUError("\(socket) is not the preload socket of the QEMU behind the QMP socket (process \(qemu))")
            }
            try UnixSocket.send(connection, bytes: [request], descriptors: [])
            return connection
        } catch {
            try? connection.close()
            throw error
        }
    }

    /// Whether this QEMU's guest RAM is whole: booted here, or arrived with the pager and
    /// every page local (request "S"). A migration away must not start before.
    static let state: UInt8 = 0x53 // "S"

    /// Sends `request` and returns the library's one JSON answer (up to `timeoutMilliseconds`).
    static func ask(_ socket: String, _ request: UInt8, qemu: Int32, timeoutMilliseconds: Int32 = 10_000) throws -> JSONValue {
        let connection = try connect(socket, request: request, qemu: qemu)
        defer { try? connection.close() }
        var reply: [UInt8] = []
        let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        while (try? JSONReader.parse(reply)) == nil {
            let now = monotonicNanoseconds()
            guard now < deadline, try UnixSocket.waitReadable(connection, timeoutMilliseconds: Int32(clamping: (deadline - now) / 1_000_000)) else {
                throw QEMUError("the preload library on \(socket) did not answer within \(timeoutMilliseconds) ms")
            }
            guard let bytes = try UnixSocket.readAvailable(connection, maxBytes: 4096) else { continue }
            if bytes.isEmpty || reply.count + bytes.count > 4096 {
                throw QEMUError("the preload library on \(socket) hung up before answering")
            }
            reply += bytes
        }
        let answer = try JSONReader.parse(reply)
        if case .string(let why)? = answer["error"] { throw QEMUError("the preload library on \(socket) refused: \(why)") }
        return answer
    }

    /// Asks for the fence; returns the bytes of RAM fenced.
    static func fenceGuestRAM(socket: String, qemu: Int32) throws -> UInt64 {
        let answer = try ask(socket, fence, qemu: qemu)
        guard answer["fenced"] == .bool(true), case .number(let size)? = answer["size"], let bytes = UInt64(size) else {
            throw QEMUError("the preload library answered the fence request with \(describe(answer))")
        }
        return bytes
    }

    /// Throws unless the guest RAM is whole here (see ``state``).
    static func requireWholeRAM(socket: String, qemu: Int32) throws {
        let answer: JSONValue
        do { answer = try ask(socket, state, qemu: qemu) } catch {
            throw QEMUError("cannot ask the source QEMU's preload library on \(socket) about its guest RAM (\(error)): start QEMU with LD_PRELOAD=libpager-preload.so PAGER_TRACK_SOCKET=\(socket)")
        }
        switch (answer["state"], answer["complete"]) {
        case (.string("booted")?, _), (.string("arrived")?, .bool(true)?): return
        case (.string("arrived")?, .bool(false)?):
            throw QEMUError("this QEMU's guest RAM is still arriving from its previous host (its pagerd qemu-dest has not finished): migrate it once every page is local")
        default: throw QEMUError("the preload library answered the state request with \(describe(answer))")
        }
    }
}
