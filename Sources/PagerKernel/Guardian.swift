import CPagerKernel
import Glibc
import Synchronization
import SystemPackage

/// A separate process that outlives this daemon to poison the memory it held.
///
/// ``PoisonGuard`` covers every way out of the process but one: SIGKILL (and the kernel's OOM
/// killer) ends it without running anything, the kernel drops its copy of the workload's
/// userfaultfd, and a workload that handed its descriptor over and closed its own reads
/// zeros where its data belongs. So each guard is also sent, descriptor and ranges, to a
/// guardian process (``GuardianProcess``) that does nothing but wait: when this process's
/// end of the socket closes with guards still open, the guardian poisons their missing
/// pages. A guard that ends (every page local, or poisoned here) is released to the guardian,
/// which closes its copy at once.
///
/// The guardian runs in a session of its own with the termination signals blocked, so a ^C,
/// a SIGTERM or a SIGHUP that ends the daemon does not end it. If it dies itself, a watcher
/// thread starts a new one and hands it every open guard. What it cannot survive is a kill
/// of both processes at once (systemd's final SIGKILL of the whole unit: see the units'
/// `KillMode=`).
public final class Guardian: @unchecked Sendable {
    /// The guardian of this process, once ``start(command:report:)`` ran.
    public static var current: Guardian? { shared.withLock { $0 } }
    private static let shared = Mutex<Guardian?>(nil)

    private struct Covered {
        /// Owned by the ``PoisonGuard`` that asked for cover: open until it calls ``uncover(_:)``.
        var uffd: Int32
        var ranges: [(range: AddressRange, pageSize: Int)]
        var owner: Int32?
    }

    private struct Running {
        var socket: FileDescriptor
        var pid: pid_t
        var pidfd: Int32
    }

    private struct State {
        var running: Running?
        var covered: [UInt32: Covered] = [:]
        var nextID: UInt32 = 1
        /// When the guardians started since the last one that lived a minute.
        var recentStarts: [UInt64] = []
    }

    private let command: [String]
    private let report: @Sendable (String) -> Void
    private let state = Mutex(State())
    private var watcher: KernelThread?

    /// Starts the guardian (`command`: the executable and its arguments; the guardian finds
    /// its socket on descriptor 3) and makes it this process's: every ``PoisonGuard`` made
    /// from now on is covered by it. `report` gets one line whenever a guardian ends and is
    /// replaced, or cannot be. Call once, at start, before any handoff.
    @discardableResult
    public static func start(command: [String], report: @escaping @Sendable (String) -> Void) throws(KernelError) -> Guardian {
        let guardian = Guardian(command: command, report: report)
        let running = try guardian.spawn()
        guardian.state.withLock { $0.running = running; $0.recentStarts = [monotonicNanoseconds()] }
        guardian.watcher = try KernelThread(name: "dst-guardian") { guardian.watch() }
        shared.withLock { $0 = guardian }
        return guardian
    }

    private init(command: [String], report: @escaping @Sendable (String) -> Void) {
        self.command = command
        self.report = report
    }

    /// The guardian's pid (0 while none runs).
    public var pid: pid_t { state.withLock { $0.running?.pid ?? 0 } }

    /// Hands the guardian a copy of `uffd` and `ranges` to poison if this process dies;
    /// returns the id ``uncover(_:)`` takes. A guardian that is being replaced gets it from
    /// the watcher with the rest.
    public func cover(uffd: FileDescriptor, ranges: [(range: AddressRange, pageSize: Int)], owner: Int32? = nil) -> UInt32 {
        state.withLock { s in
            let id = s.nextID
            s.nextID &+= 1
            let covered = Covered(uffd: uffd.rawValue, ranges: ranges, owner: owner)
            s.covered[id] = covered
            // A guardian that just died has not got it: the watcher sends it to the next one.
            if let running = s.running { _ = send(id, covered, to: running.socket) }
            return id
        }
    }

    /// The guard `id` ended (its pages are local or poisoned): the guardian closes its copy.
    /// Idempotent.
    public func uncover(_ id: UInt32) {
        state.withLock { s in
            guard s.covered.removeValue(forKey: id) != nil, let running = s.running else { return }
            do {
                try UnixSocket.send(running.socket, bytes: GuardianRecord(operation: .release, guardID: id).bytes, descriptors: [])
            } catch {
                // The guardian is gone: its copies went with it; the watcher starts the next.
            }
        }
    }

    /// Sends every range of one guard, the descriptor with the first. False if the guardian
    /// is gone (the watcher resends to its successor).
    private func send(_ id: UInt32, _ covered: Covered, to socket: FileDescriptor) -> Bool {
        for (i, r) in covered.ranges.enumerated() {
            let record = GuardianRecord(operation: .guardRange, guardID: id, range: r.range, pageSize: UInt64(r.pageSize),
                                        owner: UInt32(bitPattern: covered.owner ?? 0))
            do {
                try UnixSocket.send(socket, bytes: record.bytes, descriptors: i == 0 ? [FileDescriptor(rawValue: covered.uffd)] : [])
            } catch {
                return false
            }
        }
        return true
    }

    private func spawn() throws(KernelError) -> Running {
        var fds: [Int32] = [-1, -1]
        if socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) < 0 {
            throw KernelError("socketpair", Errno(rawValue: Glibc.errno), detail: "guardian")
        }
        defer { close(fds[1]) }
        let argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid = pid_t()
        let r = pager_spawn_guardian(command[0], argv, fds[1], &pid)
        if r < 0 {
            close(fds[0])
            throw KernelError("posix_spawn", negatedErrno: r, detail: command[0])
        }
        let pidfd = pager_pidfd_open(pid)
        if pidfd < 0 {
            close(fds[0])
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            throw KernelError("pidfd_open", negatedErrno: pidfd, detail: "guardian \(pid)")
        }
        return Running(socket: FileDescriptor(rawValue: fds[0]), pid: pid, pidfd: pidfd)
    }

    /// Waits for the guardian to end (its pidfd), reaps it and starts the next with every
    /// open guard, for the life of the process. Five starts within a minute mean it cannot
    /// live here: that is reported, and guards are then covered by this process alone.
    private func watch() {
        while true {
            guard let (pidfd, pid) = state.withLock({ s in s.running.map { ($0.pidfd, $0.pid) } }) else { return }
            var pfd = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
            _ = retryingInterrupts { Int(poll(&pfd, 1, -1)) }
            var raw: Int32 = 0
            waitpid(pid, &raw, 0)
            let how = (raw & 0x7F) == 0 ? "exited with status \((raw >> 8) & 0xFF)" : "was killed by signal \(raw & 0x7F)"
            let outcome: String = state.withLock { s in
                if let old = s.running {
                    try? old.socket.close()
                    close(old.pidfd)
                }
                s.running = nil
                let now = monotonicNanoseconds()
                s.recentStarts = s.recentStarts.filter { now - $0 < 60_000_000_000 }
                guard s.recentStarts.count < 5 else {
                    return "no guardian from now on (\(s.recentStarts.count) started within a minute): a SIGKILL of this daemon would leave the memory it holds unpoisoned"
                }
                do {
                    let next = try spawn()
                    s.recentStarts.append(now)
                    // If this one dies too, its pidfd says so and the loop starts another.
                    for (id, covered) in s.covered.sorted(by: { $0.key < $1.key }) where !send(id, covered, to: next.socket) { break }
                    s.running = next
                    return "started guardian process \(next.pid), covering \(s.covered.count) workload(s)"
                } catch {
                    return "no guardian from now on (\(error)): a SIGKILL of this daemon would leave the memory it holds unpoisoned"
                }
            }
            report("guardian process \(pid) \(how): \(outcome)")
        }
    }
}
