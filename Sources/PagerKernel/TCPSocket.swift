import CPagerKernel
import Glibc
import SystemPackage

/// A connected TCP (IPv4) stream socket with blocking I/O, owned: closed on deinit.
///
/// The page path uses one socket per direction of work on dedicated threads: blocking
/// `recv`/`sendmsg` measured fastest here for request/response latency.
public final class TCPSocket: @unchecked Sendable {
    public let descriptor: FileDescriptor
    /// The peer's address as `a.b.c.d:port`, for messages.
    public let peer: String

    /// The peer's host alone (`a.b.c.d`): what admission control counts connections by.
    public var peerHost: Substring {
        guard let colon = peer.lastIndex(of: ":") else { return Substring(peer) }
        return peer[..<colon]
    }

    init(descriptor: FileDescriptor, peer: String) {
        self.descriptor = descriptor
        self.peer = peer
    }

    deinit { try? descriptor.close() }

    /// Connects to `host:port` (IPv4 literal) with `TCP_NODELAY`, from the local address
    /// `source` if given (`bind` with port 0 first: a benchmark's flood comes from other
    /// loopback hosts than the destination it measures).
    ///
    /// `timeoutMilliseconds` (0: the kernel's, about two minutes of SYN retries) bounds the
    /// connect itself: a reconnect into a blackhole must fail in a bounded time and try again.
    public static func connect(_ endpoint: Endpoint, from source: String? = nil, timeoutMilliseconds: Int = 0) throws(KernelError) -> TCPSocket {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw KernelError("socket", Errno(rawValue: Glibc.errno), detail: "\(endpoint)") }
        // Linux bounds a blocking connect by SO_SNDTIMEO (it then fails with EINPROGRESS).
        if timeoutMilliseconds > 0 { setTimeout(fd, SO_SNDTIMEO, milliseconds: timeoutMilliseconds) }
        if let source {
            var local = Endpoint(host: source, port: 0).sockaddr
            let r = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if r < 0 {
                let e = Glibc.errno
                close(fd)
                throw KernelError("bind", Errno(rawValue: e), detail: source)
            }
        }
        var addr = endpoint.sockaddr
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r < 0 {
            let e = Glibc.errno
            close(fd)
            throw KernelError("connect", Errno(rawValue: e), detail: "\(endpoint)")
        }
        if timeoutMilliseconds > 0 { setTimeout(fd, SO_SNDTIMEO, milliseconds: 0) }
        let s = TCPSocket(descriptor: FileDescriptor(rawValue: fd), peer: "\(endpoint)")
        s.setNoDelay()
        return s
    }

    /// A send blocked this long fails (`SO_SNDTIMEO`): for a peer that stops reading.
    public func setSendTimeout(milliseconds: Int) {
        TCPSocket.setTimeout(descriptor.rawValue, SO_SNDTIMEO, milliseconds: milliseconds)
    }

    /// ``setSendTimeout(milliseconds:)`` for any socket descriptor (a Unix one).
    public static func setSendTimeout(_ socket: FileDescriptor, milliseconds: Int) {
        setTimeout(socket.rawValue, SO_SNDTIMEO, milliseconds: milliseconds)
    }

    private static func setTimeout(_ fd: Int32, _ option: Int32, milliseconds: Int) {
        var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        _ = setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Data sent but not acknowledged for this long fails the connection (`TCP_USER_TIMEOUT`):
    /// a blackholed peer is noticed in that time, not after TCP's 15 minutes of retransmits.
    public func setUserTimeout(milliseconds: Int) {
        var v = UInt32(clamping: milliseconds)
        _ = setsockopt(descriptor.rawValue, Int32(IPPROTO_TCP), 18 /* TCP_USER_TIMEOUT */, &v, socklen_t(MemoryLayout<UInt32>.size))
    }

    fileprivate func setNoDelay() {
        var one: Int32 = 1
        _ = setsockopt(descriptor.rawValue, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sets the kernel socket buffer sizes (`SO_SNDBUF`/`SO_RCVBUF`).
    public func setBufferSizes(_ bytes: Int) {
        setSendBufferSize(bytes)
        setReceiveBufferSize(bytes)
    }

    /// Sets the send buffer alone (`SO_SNDBUF`; the kernel doubles it for bookkeeping).
    public func setSendBufferSize(_ bytes: Int) {
        var v = Int32(bytes)
        _ = setsockopt(descriptor.rawValue, SOL_SOCKET, SO_SNDBUF, &v, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sets the receive buffer alone (`SO_RCVBUF`; the kernel doubles it for bookkeeping).
    public func setReceiveBufferSize(_ bytes: Int) {
        var v = Int32(bytes)
        _ = setsockopt(descriptor.rawValue, SOL_SOCKET, SO_RCVBUF, &v, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Limits the data queued but not yet sent (`TCP_NOTSENT_LOWAT`): a blocking `send` waits
    /// until less than `bytes` is unsent, so a frame queued later is not stuck behind a deep
    /// backlog of older ones.
    public func setUnsentLimit(_ bytes: Int) {
        var v = Int32(bytes)
        _ = setsockopt(descriptor.rawValue, Int32(IPPROTO_TCP), 25 /* TCP_NOTSENT_LOWAT */, &v, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sets a receive timeout (`SO_RCVTIMEO`): a blocked read fails with EAGAIN after it.
    public func setReceiveTimeout(milliseconds: Int) {
        TCPSocket.setTimeout(descriptor.rawValue, SO_RCVTIMEO, milliseconds: milliseconds)
    }

    /// Reads exactly `count` bytes into `buffer`. Returns false if the peer closed the
    /// connection cleanly before the first byte; throws if it closed mid-way or on error.
    public func readExactly(into buffer: UnsafeMutableRawPointer, count: Int) throws(KernelError) -> Bool {
        let got = try readFully(into: buffer, count: count)
        if got == count || got == 0 { return got == count }
        throw KernelError("recv", .connectionReset, detail: "\(peer) closed the connection after \(got) of \(count) bytes")
    }

    /// Reads `count` bytes into `buffer` (`recv` with `MSG_WAITALL`, again after a signal
    /// cuts it short) and returns how many arrived: fewer than `count` only if the peer
    /// closed the connection, so the caller decides what an end of stream there means.
    public func readFully(into buffer: UnsafeMutableRawPointer, count: Int) throws(KernelError) -> Int {
        var got = 0
        while got < count {
            let n = try receive(buffer + got, count - got, PAGER_MSG_WAITALL)
            if n == 0 { break }
            got += n
        }
        return got
    }

    /// Blocks until at least one byte is available, then reads up to `count` (`recv`).
    /// Returns 0 when the peer closed.
    public func readSome(into buffer: UnsafeMutableRawPointer, count: Int) throws(KernelError) -> Int {
        try receive(buffer, count, 0)
    }

    /// Reads what is available without blocking (`MSG_DONTWAIT`): returns 0 if nothing is
    /// pending, -1 if the peer closed.
    public func readAvailable(into buffer: UnsafeMutableRawBufferPointer) throws(KernelError) -> Int {
        switch retryingInterrupts({ recv(descriptor.rawValue, buffer.baseAddress, buffer.count, PAGER_MSG_DONTWAIT) }) {
        case .success(let n): return n > 0 ? n : -1
        case .failure(let e) where e == .resourceTemporarilyUnavailable || e == .wouldBlock: return 0
        case .failure(let e): throw KernelError("recv", e, detail: peer)
        }
    }

    /// One `recv`, retried after EINTR; 0 means the peer closed.
    private func receive(_ buffer: UnsafeMutableRawPointer, _ count: Int, _ flags: Int32) throws(KernelError) -> Int {
        switch retryingInterrupts({ recv(descriptor.rawValue, buffer, count, flags) }) {
        case .success(let n): return n
        case .failure(let e): throw KernelError("recv", e, detail: peer)
        }
    }

    /// Writes all of the given buffers (`sendmsg` with an iovec, `MSG_NOSIGNAL`), looping over
    /// short writes. The corresponding C function is `sendmsg`.
    ///
    /// Not atomic: the kernel may return after part of the buffers (a signal, a send timeout)
    /// and even one blocking `sendmsg` on TCP lets another thread's data in while it waits
    /// for buffer space. Callers that share a socket between threads serialise whole writes
    /// (FrameChannel does, per frame).
    ///
    /// `maxBytesPerCall` caps what one `sendmsg` is offered, so tests can force the short
    /// writes that signals and full buffers cause; the page path leaves it unlimited.
    public func writeAll(_ parts: [UnsafeRawBufferPointer], maxBytesPerCall: Int = .max) throws(KernelError) {
        var iov = parts.filter { $0.count > 0 }.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
        var first = 0
        while first < iov.count {
            let r = iov.withUnsafeMutableBufferPointer { buf in
                // SAFETY: first < buf.count, so the pointer and count stay inside `iov`.
                sendSome(buf.baseAddress! + first, count: buf.count - first, cap: maxBytesPerCall)
            }
            var left: Int
            switch r {
            case .success(let n): left = n
            case .failure(let e): throw KernelError("sendmsg", e, detail: peer)
            }
            while left > 0 && first < iov.count {
                if left >= iov[first].iov_len {
                    left -= iov[first].iov_len
                    first += 1
                } else {
                    iov[first].iov_base += left
                    iov[first].iov_len -= left
                    left = 0
                }
            }
        }
    }

    /// One `sendmsg` of `count` iovecs at `iov` (at most `cap` bytes of them), retried after EINTR.
    private func sendSome(_ iov: UnsafeMutablePointer<iovec>, count: Int, cap: Int) -> Result<Int, Errno> {
        var n = count
        var saved: iovec?
        if cap != .max {
            // Offer only the first `cap` bytes: cut the iovec list, shortening its last entry.
            var total = 0
            n = 0
            while n < count && total < cap {
                if total + iov[n].iov_len > cap {
                    saved = iov[n]
                    iov[n].iov_len = cap - total
                }
                total += iov[n].iov_len
                n += 1
            }
        }
        defer { if let saved { iov[n - 1] = saved } }
        return retryingInterrupts {
            var msg = msghdr()
            msg.msg_iov = iov
            msg.msg_iovlen = n
            return sendmsg(descriptor.rawValue, &msg, PAGER_MSG_NOSIGNAL)
        }
    }

    /// Waits until the socket is readable or `timeoutMilliseconds` passes (`poll`).
    public func waitReadable(timeoutMilliseconds: Int32) throws(KernelError) -> Bool {
        try pollReadable([descriptor], timeoutMilliseconds: timeoutMilliseconds, detail: peer)[0]
    }

    /// Which of `sockets` are readable (or hung up), waiting at most `timeoutMilliseconds` for
    /// one to be (`poll`).
    public static func readable(_ sockets: [TCPSocket], timeoutMilliseconds: Int32) throws(KernelError) -> [Bool] {
        try pollReadable(sockets.map(\.descriptor), timeoutMilliseconds: timeoutMilliseconds, detail: "\(sockets.count) sockets")
    }

    /// Waits until the socket is readable (data, an end of stream or an error to collect) or
    /// `deadline` passes (`poll`): false once it has passed, even if bytes arrive at that
    /// very moment, so a deadline bounds a whole exchange however the peer paces it.
    ///
    /// `poll` counts milliseconds: the wait is rounded up and repeated if it woke a little
    /// early, so it never gives up before the deadline. The corresponding C function is `poll`.
    public func waitReadable(until deadline: Deadline) throws(KernelError) -> Bool {
        try pollReadable(descriptor, until: deadline, detail: peer)
    }

    /// Shuts down both directions (`shutdown(SHUT_RDWR)`), waking a thread blocked in a read.
    public func shutdown() {
        _ = Glibc.shutdown(descriptor.rawValue, Int32(SHUT_RDWR))
    }
}

/// A listening TCP (IPv4) socket.
public final class TCPListener: @unchecked Sendable {
    public let descriptor: FileDescriptor
    /// The bound address (with the real port when 0 was asked for).
    public let endpoint: Endpoint

    /// Binds and listens on `endpoint` (`SO_REUSEADDR`). Port 0 picks a free port.
    ///
    /// The backlog is deep (1024; the kernel caps it at `net.core.somaxconn`, 4096 by default
    /// since Linux 5.4): under a connection flood the accept loop evicts idle handshakes
    /// quickly, but a destination's SYN that finds the queue full waits a whole
    /// retransmission timeout (1 s, then 3 s) before it tries again.
    public init(_ endpoint: Endpoint, backlog: Int32 = 1024) throws(KernelError) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw KernelError("socket", Errno(rawValue: Glibc.errno), detail: "\(endpoint)") }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = endpoint.sockaddr
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r < 0 || listen(fd, backlog) < 0 {
            let e = Glibc.errno
            close(fd)
            throw KernelError(r < 0 ? "bind" : "listen", Errno(rawValue: e), detail: "\(endpoint)")
        }
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        descriptor = FileDescriptor(rawValue: fd)
        self.endpoint = Endpoint(host: endpoint.host, port: UInt16(bigEndian: bound.sin_port))
    }

    deinit { try? descriptor.close() }

    /// Accepts one connection (`accept4`), with `TCP_NODELAY`.
    public func accept() throws(KernelError) -> TCPSocket {
        var addr = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        while true {
            let r = retryingInterrupts(negatedErrno: {
                withUnsafeMutablePointer(to: &addr) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pager_accept_addr(descriptor.rawValue, $0, &len) }
                }
            })
            switch r {
            case .success(let fd):
                let s = TCPSocket(descriptor: FileDescriptor(rawValue: fd), peer: "\(Endpoint(addr))")
                s.setNoDelay()
                return s
            case .failure(.connectionAbort):
                // The peer gave up before we accepted: wait for the next one.
                len = socklen_t(MemoryLayout<sockaddr_in>.size)
                continue
            case .failure(let e):
                throw KernelError("accept4", e, detail: "\(endpoint)")
            }
        }
    }

    /// Stops accepting (`shutdown`), waking a thread blocked in ``accept()``.
    public func shutdown() {
        _ = Glibc.shutdown(descriptor.rawValue, Int32(SHUT_RDWR))
    }
}

/// An IPv4 address and port, parsed from and printed as `a.b.c.d:port`.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `a.b.c.d:port` (or `:port`, meaning all addresses).
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
        let host = String(text[..<colon])
        var probe = in_addr()
        guard host.isEmpty || inet_pton(AF_INET, host, &probe) == 1 else { return nil }
        self.init(host: host.isEmpty ? "0.0.0.0" : host, port: port)
    }

    init(_ addr: sockaddr_in) {
        var a = addr.sin_addr
        var buf = [CChar](repeating: 0, count: 32)
        inet_ntop(AF_INET, &a, &buf, 32)
        self.init(host: String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
                  port: UInt16(bigEndian: addr.sin_port))
    }

    var sockaddr: sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        _ = inet_pton(AF_INET, host, &a.sin_addr)
        return a
    }

    public var description: String { "\(host):\(port)" }
}
