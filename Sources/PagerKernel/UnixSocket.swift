import CPagerKernel
import Glibc
import SystemPackage

/// Unix-domain stream sockets, and passing descriptors between processes over them
/// (`SCM_RIGHTS`), the way a process hands its userfaultfd to a pager.
public enum UnixSocket {
    /// A connected pair (`socketpair(AF_UNIX, SOCK_STREAM)`), both close-on-exec.
    public static func pair() throws(KernelError) -> (FileDescriptor, FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        if socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) < 0 {
            throw KernelError("socketpair", Errno(rawValue: Glibc.errno))
        }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    /// Creates, binds and listens on a socket at `path`, replacing a stale socket file: only
    /// a socket nobody listens on is removed; any other file there, or a live socket (another
    /// daemon), is an error. The file is created with mode `mode` (the umask is set for the
    /// bind, so the socket is never reachable with wider permissions, not even for an instant).
    public static func listen(path: String, backlog: Int32 = 16, mode: UInt32 = 0o777) throws(KernelError) -> FileDescriptor {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw KernelError("socket", Errno(rawValue: Glibc.errno), detail: path) }
        var existing = stat()
        if !path.hasPrefix("@"), lstat(path, &existing) == 0 {
            guard existing.st_mode & S_IFMT == S_IFSOCK else {
                close(fd)
                throw KernelError("bind", .fileExists, detail: "\(path) exists and is not a socket: refusing to replace it")
            }
            if let live = try? connect(path: path) {
                try? live.close()
                close(fd)
                throw KernelError("bind", .addressInUse, detail: "\(path): another process listens there")
            }
            unlink(path)
        }
        let previous = umask(mode_t(~mode & 0o777))
        let r = withSocketAddress(path) { bind(fd, $0, $1) }
        umask(previous)
        if r.result < 0 || Glibc.listen(fd, backlog) < 0 {
            let e = r.result < 0 ? r.errno : Glibc.errno
            close(fd)
            throw KernelError(r.result < 0 ? "bind" : "listen", Errno(rawValue: e), detail: path)
        }
        return FileDescriptor(rawValue: fd)
    }

    /// ``listen(path:backlog:)``, then the socket file given to `group` (if any) and mode
    /// 0660: only its owner and group may connect. Nothing is left at `path` on failure.
    public static func listen(path: String, group: String?) throws(KernelError) -> FileDescriptor {
        let fd = try listen(path: path, mode: 0o660)
        do {
            // Not following a symbolic link: whoever may write in the directory cannot make
            // this chown land on another file.
            if let group { try setGroup(path, named: group, followingLinks: false) }
        } catch {
            try? fd.close()
            removeFile(path)
            throw error
        }
        return fd
    }

    /// Connects to the socket at `path`.
    public static func connect(path: String) throws(KernelError) -> FileDescriptor {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw KernelError("socket", Errno(rawValue: Glibc.errno), detail: path) }
        let r = withSocketAddress(path) { Glibc.connect(fd, $0, $1) }
        if r.result < 0 {
            close(fd)
            throw KernelError("connect", Errno(rawValue: r.errno), detail: path)
        }
        return FileDescriptor(rawValue: fd)
    }

    /// Accepts one connection (`accept4` with `SOCK_CLOEXEC`).
    public static func accept(_ listener: FileDescriptor) throws(KernelError) -> FileDescriptor {
        let fd = pager_accept_cloexec(listener.rawValue)
        if fd < 0 { throw KernelError("accept4", negatedErrno: fd) }
        return FileDescriptor(rawValue: fd)
    }

    /// The pid of the process at the other end (`getsockopt(SO_PEERCRED)`).
    public static func peerProcess(_ socket: FileDescriptor) throws(KernelError) -> Int32 {
        let r = pager_peer_pid(socket.rawValue)
        if r < 0 { throw KernelError("getsockopt(SO_PEERCRED)", negatedErrno: r) }
        return r
    }

    /// Sends `bytes` with `descriptors` attached (`sendmsg` with `SCM_RIGHTS`). The
    /// descriptors stay open in this process. The corresponding C function is `sendmsg`.
    public static func send(_ socket: FileDescriptor, bytes: [UInt8], descriptors: [FileDescriptor]) throws(KernelError) {
        let fds = descriptors.map(\.rawValue)
        let payload = bytes.isEmpty ? [0] : bytes // a message with descriptors needs a data byte
        let n = payload.withUnsafeBytes { buf in
            fds.withUnsafeBufferPointer { pager_send_fds(socket.rawValue, buf.baseAddress, buf.count, $0.baseAddress, Int32(fds.count)) }
        }
        if n < 0 { throw KernelError("sendmsg", negatedErrno: Int32(n), detail: "SCM_RIGHTS x\(fds.count)") }
        if n != payload.count { throw KernelError("sendmsg", .messageTooLong, detail: "short send \(n) of \(payload.count)") }
    }

    /// What ``receive(_:maxBytes:maxDescriptors:)`` read.
    public struct Received: Sendable {
        public var bytes: [UInt8]
        /// Descriptors received, now owned by the caller.
        public var descriptors: [FileDescriptor]
        /// The sender sent more bytes or descriptors than asked for; extra descriptors were closed.
        public var truncated: Bool
    }

    /// Receives one message with up to `maxDescriptors` descriptors (`recvmsg`,
    /// `MSG_CMSG_CLOEXEC`). Zero bytes with no descriptors means the peer closed.
    public static func receive(_ socket: FileDescriptor, maxBytes: Int, maxDescriptors: Int) throws(KernelError) -> Received {
        var bytes = [UInt8](repeating: 0, count: maxBytes)
        var fds = [Int32](repeating: -1, count: max(1, maxDescriptors))
        var nfds: Int32 = 0
        var truncated: Int32 = 0
        let n = bytes.withUnsafeMutableBytes { buf in
            fds.withUnsafeMutableBufferPointer {
                pager_recv_fds(socket.rawValue, buf.baseAddress, buf.count, $0.baseAddress, Int32(maxDescriptors), &nfds, &truncated)
            }
        }
        if n < 0 { throw KernelError("recvmsg", negatedErrno: Int32(n)) }
        bytes.removeSubrange(Int(n)...)
        return Received(bytes: bytes, descriptors: fds.prefix(Int(nfds)).map { FileDescriptor(rawValue: $0) },
                        truncated: truncated != 0)
    }

    /// Reads what is pending without blocking (`MSG_DONTWAIT`): nil if nothing is pending,
    /// empty if the peer closed.
    public static func readAvailable(_ socket: FileDescriptor, maxBytes: Int) throws(KernelError) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: maxBytes)
        switch retryingInterrupts({ bytes.withUnsafeMutableBytes { recv(socket.rawValue, $0.baseAddress, $0.count, PAGER_MSG_DONTWAIT) } }) {
        case .success(let n): return Array(bytes.prefix(n))
        case .failure(let e) where e == .wouldBlock || e == .resourceTemporarilyUnavailable: return nil
        case .failure(let e): throw KernelError("recv", e, detail: "unix socket")
        }
    }

    /// Waits until `socket` is readable (or hung up), or `deadline` passes (false) (`poll`).
    public static func waitReadable(_ socket: FileDescriptor, until deadline: Deadline) throws(KernelError) -> Bool {
        try pollReadable(socket, until: deadline, detail: "unix socket")
    }

    /// Waits until `socket` is readable (or hung up), at most `timeoutMilliseconds` (`poll`).
    public static func waitReadable(_ socket: FileDescriptor, timeoutMilliseconds: Int32) throws(KernelError) -> Bool {
        try pollReadable([socket], timeoutMilliseconds: timeoutMilliseconds, detail: "unix socket")[0]
    }

    /// A path starting with `@` names the abstract namespace (as systemd writes
    /// `$NOTIFY_SOCKET`): its first byte becomes NUL and the address is exactly its length.
    private static func withSocketAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> (result: Int32, errno: Int32) {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        var utf8 = Array(path.utf8)
        let abstract = utf8.first == UInt8(ascii: "@")
        if abstract { utf8[0] = 0 }
        guard utf8.count < capacity else { return (-1, ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: utf8)
            raw[utf8.count] = 0
        }
        let length = abstract ? MemoryLayout<sa_family_t>.size + utf8.count : MemoryLayout<sockaddr_un>.size
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(length)) }
        }
        return (r, r < 0 ? Glibc.errno : 0)
    }

    /// A new `AF_UNIX` `SOCK_DGRAM` socket (close-on-exec).
    private static func datagramSocket() throws(KernelError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw KernelError("socket", Errno(rawValue: Glibc.errno), detail: "AF_UNIX datagram") }
        return fd
    }

    /// Sends one datagram to the socket at `path` (`sendto` on a fresh `SOCK_DGRAM` socket).
    public static func sendDatagram(to path: String, bytes: [UInt8]) throws(KernelError) {
        let fd = try datagramSocket()
        defer { close(fd) }
        let (r, e) = withSocketAddress(path) { addr, length in
            Int32(bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), addr, length) })
        }
        if r < 0 { throw KernelError("sendto", Errno(rawValue: e), detail: path) }
    }

    /// A bound `SOCK_DGRAM` socket at `path` (for tests that play systemd's notify socket).
    public static func bindDatagram(path: String) throws(KernelError) -> FileDescriptor {
        let fd = try datagramSocket()
        if !path.hasPrefix("@") { unlink(path) }
        let (r, e) = withSocketAddress(path) { bind(fd, $0, $1) }
        if r < 0 {
            close(fd)
            throw KernelError("bind", Errno(rawValue: e), detail: path)
        }
        return FileDescriptor(rawValue: fd)
    }
}

/// `shutdown(SHUT_RDWR)` on a socket descriptor: wakes threads blocked on it.
@discardableResult
public func shutdownSocket(_ fd: FileDescriptor) -> Bool {
    shutdown(fd.rawValue, Int32(SHUT_RDWR)) == 0
}
