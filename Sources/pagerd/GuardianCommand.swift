import ArgumentParser
import Logging
import PagerKernel
import SystemPackage

/// `pagerd guardian`: started by `pagerd dest` and `pagerd qemu-dest` from their own binary,
/// never by hand (hidden from the help). See ``Guardian`` and ``GuardianProcess``.
struct GuardianCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guardian",
        abstract: "Poisons the memory a destination daemon held if it dies (started by the daemon itself).",
        shouldDisplay: false
    )

    /// Where the daemon passes its end of the socket (see `pager_spawn_guardian`).
    static let socketDescriptor: Int32 = 3

    func validate() throws {
        guard GuardianProcess.isSocket(FileDescriptor(rawValue: Self.socketDescriptor)) else {
            throw ValidationError("pagerd guardian is started by pagerd dest and qemu-dest (descriptor 3 must be their socket)")
        }
    }

    func run() throws {
        let status = GuardianProcess.serve(socket: FileDescriptor(rawValue: Self.socketDescriptor))
        if status != 0 { throw ExitCode(status) }
    }
}

/// Starts this daemon's guardian (`/proc/self/exe guardian`: the same binary, even if the file
/// was replaced since) before any handoff is taken.
func startGuardian(_ logger: Logger) throws {
    let guardian = try Guardian.start(command: ["/proc/self/exe", "guardian"]) { line in logger.error("\(line)") }
    logger.info("guardian process \(guardian.pid): if this daemon is killed (SIGKILL, the OOM killer), it poisons the memory held here")
}
