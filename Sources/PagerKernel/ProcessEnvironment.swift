import Glibc
import SystemPackage

// The process and file-system calls the tools around the pager need (the demo, the
// benchmark kit, the test harness, the fuzz replay), so that no module but this one imports
// Glibc. One-line wrappers, no logic beyond decoding the C result.

/// This process's id. The corresponding C function is `getpid`.
public func processID() -> Int32 { getpid() }

/// Whether this process runs as root (effective uid 0). The corresponding C function is `geteuid`.
public var isRootUser: Bool { geteuid() == 0 }

/// The value of environment variable `name`, or nil if unset. The corresponding C function is `getenv`.
public func environmentValue(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

/// Removes a file; a missing file is not an error (callers clean up best-effort).
/// The corresponding C function is `unlink`.
public func removeFile(_ path: String) { _ = unlink(path) }

/// Sets a file's permission bits. The corresponding C function is `chmod`.
public func setPermissions(_ path: String, _ mode: UInt32) throws(KernelError) {
    if chmod(path, mode_t(mode)) != 0 { throw KernelError("chmod", Errno(rawValue: errno), detail: path) }
}

/// Gives a file to group `name` (its owner unchanged); with `followingLinks` false a symbolic
/// link itself, never what it points to. The corresponding C functions are `getgrnam_r` and
/// `chown` / `lchown`.
public func setGroup(_ path: String, named name: String, followingLinks: Bool = true) throws(KernelError) {
    var group = group()
    var result: UnsafeMutablePointer<group>?
    var size = 16_384
    var r: Int32 = ERANGE
    while r == ERANGE && size <= 1 << 24 {
        var buffer = [CChar](repeating: 0, count: size)
        r = getgrnam_r(name, &group, &buffer, buffer.count, &result)
        size *= 4
    }
    guard r == 0, result != nil else {
        throw KernelError("getgrnam_r", Errno(rawValue: r == 0 ? ENOENT : r), detail: "group \(name) (no such group?)")
    }
    let gid = group.gr_gid
    let changed = followingLinks ? chown(path, uid_t.max, gid) : lchown(path, uid_t.max, gid)
    if changed != 0 { throw KernelError(followingLinks ? "chown" : "lchown", Errno(rawValue: errno), detail: "\(path) to group \(name)") }
}

/// Renames `from` over `to` atomically (same file system). The corresponding C function is `rename`.
public func renameFile(_ from: String, to: String) throws(KernelError) {
    if rename(from, to) != 0 { throw KernelError("rename", Errno(rawValue: errno), detail: "\(from) to \(to)") }
}

/// Whether `path` exists and this process may execute it. The corresponding C function is `access(X_OK)`.
public func isExecutableFile(_ path: String) -> Bool { access(path, X_OK) == 0 }

/// Whether `path` exists and this process may read it. The corresponding C function is `access(R_OK)`.
public func isReadableFile(_ path: String) -> Bool { access(path, R_OK) == 0 }

/// Size and modification time of a file, or nil if it cannot be stat'ed.
/// The corresponding C function is `stat`.
public func fileSizeAndModificationTime(_ path: String) -> (bytes: Int, modifiedSeconds: Int)? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return (Int(st.st_size), Int(st.st_mtim.tv_sec))
}

/// Reads a whole file as bytes (procfs files, the fuzz replay's inputs). The corresponding C
/// functions are `open` and `read` (see ``readWholeFile(_:)`` for text).
public func readFileBytes(_ path: String) throws(KernelError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { throw KernelError("open", Errno(rawValue: Glibc.errno), detail: path) }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n: Int
        switch retryingInterrupts({ chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }) {
        case .success(let got): n = got
        case .failure(let e): throw KernelError("read", e, detail: path)
        }
        if n == 0 { return bytes }
        bytes.append(contentsOf: chunk[0..<n])
    }
}

/// A signal sent to a ``ChildProcess``: the few the tools use, by name.
public struct ProcessSignal: Sendable, Equatable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    /// `SIGTERM`: stop gracefully (the daemons report and exit).
    public static let terminate = ProcessSignal(rawValue: SIGTERM)
    /// `SIGKILL`: stop now (cleanup of a test's or benchmark's children).
    public static let kill = ProcessSignal(rawValue: SIGKILL)
    /// `SIGUSR1`: `pagerd source` forces the pre-copy switch.
    public static let user1 = ProcessSignal(rawValue: SIGUSR1)
}

extension ChildProcess {
    /// Sends `signal` to the process (nothing once it has been waited for). The corresponding C function is `kill`.
    public func signal(_ signal: ProcessSignal) { self.signal(signal.rawValue) }
}

/// A fresh directory (`mkdtemp`), removed with everything in it on deinit unless ``keep`` is set.
public final class TemporaryDirectory {
    public let path: String
    /// Leave the directory in place on deinit (to read the logs in it afterwards).
    public var keep = false

    /// `template` ends in `XXXXXX`, which `mkdtemp` replaces. The corresponding C function is `mkdtemp`.
    public init(template: String) throws(KernelError) {
        var chars = Array(template.utf8CString)
        let made = chars.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) != nil }
        if !made { throw KernelError("mkdtemp", Errno(rawValue: Glibc.errno), detail: template) }
        path = chars.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    deinit {
        // rm -rf rather than a recursive walk here: sockets, logs and sparse files, one level
        // deep or more, and nothing on this path is performance-critical.
        if !keep { _ = try? runProgram("/bin/rm", ["-rf", path]) }
    }

    /// `path/name`.
    public func file(_ name: String) -> String { path + "/" + name }
}

/// The device and inode of a file, as `dev:ino` in decimal: what systemd puts in
/// `$JOURNAL_STREAM` for the stream it connected. The corresponding C function is `stat`.
public func fileIdentity(_ path: String) -> String? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return "\(st.st_dev):\(st.st_ino)"
}

/// Whether standard error is the journal's stream: `$JOURNAL_STREAM` names its device and
/// inode (systemd sets it for the service's own stdout/stderr; a redirection elsewhere no
/// longer matches). The corresponding C function is `fstat`.
public var standardErrorIsJournal: Bool {
    guard let expected = environmentValue("JOURNAL_STREAM") else { return false }
    var st = stat()
    guard fstat(2, &st) == 0 else { return false }
    return expected == "\(st.st_dev):\(st.st_ino)"
}
