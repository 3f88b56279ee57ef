import CPagerKernel
import Glibc
import SystemPackage

/// Runs a program to completion (`posix_spawn`), capturing its standard output and error.
/// The corresponding C functions are `posix_spawn` and `waitpid`.
public func runProgram(_ path: String, _ arguments: [String]) throws(KernelError) -> (status: Int32, output: String) {
    var pipeFDs: [Int32] = [-1, -1]
    if pipe(&pipeFDs) < 0 { throw KernelError("pipe", Errno(rawValue: Glibc.errno)) }
    // Close-on-exec for both ends (pipe2 needs _GNU_SOURCE); the child's dup2 onto fd 1 clears it there.
    for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
    posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 2)
    let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var pid = pid_t()
    let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
    close(pipeFDs[1])
    if rc != 0 {
        close(pipeFDs[0])
        throw KernelError("posix_spawn", Errno(rawValue: rc), detail: path)
    }
    var output: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        guard case .success(let n) = retryingInterrupts({ chunk.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) } }),
              n > 0 else { break }
        output += chunk[0..<n]
    }
    close(pipeFDs[0])
    var status: Int32 = 0
    _ = retryingInterrupts { Int(waitpid(pid, &status, 0)) }
    // WIFEXITED / WEXITSTATUS are macros: decode the status word by hand.
    let exitCode = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    return (exitCode, String(decoding: output, as: UTF8.self))
}

/// The directory holding the running executable (from `/proc/self/exe`).
public func executableDirectory() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { return "." }
    let path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
}

/// A child process started in the background, its output (stdout and stderr) going to a
/// file. Waiting uses a pidfd (`pidfd_open` + `poll`): an event, not a sleep loop.
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    public let outputPath: String
    private let pidfd: Int32
    public private(set) var status: Int32?
    /// User + system CPU seconds the process used (all its threads, and the children it
    /// waited for), known once it has been waited for (`wait4`'s rusage).
    public private(set) var cpuSeconds: Double?

    public init(_ path: String, _ arguments: [String], outputPath: String) throws(KernelError) {
        let out = open(outputPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if out < 0 { throw KernelError("open", Errno(rawValue: Glibc.errno), detail: outputPath) }
        defer { close(out) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, out, 1)
        posix_spawn_file_actions_adddup2(&actions, out, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var child = pid_t()
        let rc = posix_spawn(&child, path, &actions, nil, argv, environ)
        if rc != 0 { throw KernelError("posix_spawn", Errno(rawValue: rc), detail: path) }
        pid = child
        self.outputPath = outputPath
        pidfd = pager_pidfd_open(child)
    }

    deinit {
        if status == nil { kill(pid, SIGKILL); _ = wait(timeoutMilliseconds: 5000) }
        if pidfd >= 0 { close(pidfd) }
    }

    /// Waits until the process exits or the timeout passes; returns its exit status
    /// (128 + signal if killed by one), or nil on timeout.
    @discardableResult
    public func wait(timeoutMilliseconds: Int32) -> Int32? {
        if let status { return status }
        if pidfd >= 0 {
            var pfd = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
            _ = retryingInterrupts { Int(poll(&pfd, 1, timeoutMilliseconds)) }
            if pfd.revents == 0 { return nil }
        }
        var raw: Int32 = 0
        var usage = rusage()
        let r = wait4(pid, &raw, 0, &usage)
        guard r == pid else { return nil }
        cpuSeconds = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        status = (raw & 0x7F) == 0 ? (raw >> 8) & 0xFF : 128 + (raw & 0x7F)
        return status
    }

    /// Sends `signal` to the process.
    public func signal(_ signal: Int32) { if status == nil { kill(pid, signal) } }

    /// Everything the process printed so far.
    public var output: String { (try? readWholeFile(outputPath)) ?? "" }
}

/// What each open descriptor of process `pid` refers to (`readlink` of `/proc/PID/fd/*`,
/// e.g. `anon_inode:[userfaultfd]`); empty if the process is gone or not ours to inspect.
public func descriptorTargets(ofProcess pid: Int32) -> [String] {
    let directory = "/proc/\(pid)/fd"
    guard let dir = opendir(directory) else { return [] }
    defer { closedir(dir) }
    var targets: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name == "." || name == ".." { continue }
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("\(directory)/\(name)", &buffer, buffer.count - 1)
        if n > 0 { targets.append(String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)) }
    }
    return targets
}

/// Waits until process `pid` (not necessarily a child) has exited, at most
/// `timeoutMilliseconds` (`pidfd_open` + `poll`): true once it is gone.
public func waitForExit(ofProcess pid: Int32, timeoutMilliseconds: Int32) -> Bool {
    let pidfd = pager_pidfd_open(pid)
    if pidfd < 0 { return true } // ESRCH: gone (and reaped) already
    defer { close(pidfd) }
    var pfd = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
    _ = retryingInterrupts { Int(poll(&pfd, 1, timeoutMilliseconds)) }
    return pfd.revents != 0
}
