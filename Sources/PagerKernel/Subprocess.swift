import Glibc
import SystemPackage

/// Runs a program to completion (`posix_spawn`), capturing its standard output.
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
        let n = chunk.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) }
        if n < 0 && Glibc.errno == EINTR { continue }
        if n <= 0 { break }
        output += chunk[0..<n]
    }
    close(pipeFDs[0])
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && Glibc.errno == EINTR {}
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
