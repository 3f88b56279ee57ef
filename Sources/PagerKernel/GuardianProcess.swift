import CPagerKernel
import Glibc
import SystemPackage

/// The guardian's side (`pagerd guardian`, started by ``Guardian``): it holds a copy of every
/// userfaultfd the daemon guards and, when the daemon's end of the socket closes with guards
/// still open (the daemon was killed with SIGKILL, the kernel's OOM killer chose it, it
/// crashed past its own handler), poisons what is missing in each, so the workloads get
/// SIGBUS there and never read zeros. A released guard's copy is closed at once: a copy kept
/// open would keep the registration alive after the daemon let go of it, and later faults
/// would wait for nobody.
public enum GuardianProcess {
    private struct Guarded {
        var uffd: FileDescriptor
        var ranges: [(range: AddressRange, pageSize: UInt64)] = []
        var owner: Int32 = 0
        /// A pidfd of the owner, opened when the guard came (-1: none): a pid reused since is
        /// never the one stopped.
        var ownerPidfd: Int32 = -1
    }

    /// Serves `socket` until the daemon's end closes; returns the exit status (0, or 1 if the
    /// socket failed in a way that cannot mean the daemon ended).
    public static func serve(socket: FileDescriptor) -> Int32 {
        // Descriptors inherited by mistake (not close-on-exec) are dropped before anything
        // else, above all another workload's userfaultfd.
        _ = pager_close_descriptors_from(socket.rawValue + 1)
        let daemon = getppid()
        var guards: [UInt32: Guarded] = [:]
        var status: Int32 = 0
        receiving: while true {
            let message: UnixSocket.Received
            do {
                message = try UnixSocket.receive(socket, maxBytes: GuardianRecord.size + 1, maxDescriptors: 1)
            } catch {
                // ECONNRESET is the daemon ending with records unread; anything else is ours.
                if error.errno != .connectionReset {
                    say("receiving from pagerd (pid \(daemon)) failed: \(error); acting as if it ended")
                    status = 1
                }
                break receiving
            }
            if message.bytes.isEmpty && message.descriptors.isEmpty { break receiving }
            var descriptors = message.descriptors
            defer { for fd in descriptors { try? fd.close() } }
            guard !message.truncated, let record = GuardianRecord(bytes: message.bytes) else {
                say("ignored a malformed record of \(message.bytes.count) bytes from pagerd (pid \(daemon))")
                continue
            }
            switch record.operation {
            case .guardRange:
                if guards[record.guardID] == nil {
                    guard !descriptors.isEmpty else {
                        say("ignored guard \(record.guardID) from pagerd (pid \(daemon)): its first record carries no userfaultfd")
                        continue
                    }
                    let owner = Int32(bitPattern: record.owner)
                    // The daemon's own pid is never an owner (the record could only lie about it).
                    let pidfd = owner > 0 && owner != daemon ? pager_owner_pidfd(owner) : -1
                    guards[record.guardID] = Guarded(uffd: descriptors.removeFirst(), owner: owner, ownerPidfd: max(pidfd, -1))
                }
                guards[record.guardID]!.ranges.append((record.range, record.pageSize))
            case .release:
                if let released = guards.removeValue(forKey: record.guardID) {
                    try? released.uffd.close()
                    if released.ownerPidfd >= 0 { close(released.ownerPidfd) }
                }
            }
        }
        guard !guards.isEmpty else { return status }
        if !PoisonGuard.kernelCanPoison {
            // Nothing can be poisoned on this kernel: each owner is stopped before the copies
            // of its userfaultfd close (the last ones: the daemon's died with it).
            var stopped: [Int32] = []
            var unknown = 0
            for g in guards.values {
                if g.ownerPidfd >= 0, pager_stop_owner_pidfd(g.ownerPidfd) == 0 {
                    stopped.append(g.owner)
                    try? g.uffd.close()
                } else {
                    // Not stopped: its copy stays open while the guardian lives, so faults wait
                    // instead of reading zeros; the guardian then waits for that workload.
                    unknown += 1
                }
            }
            say("pagerd (pid \(daemon)) ended holding the memory of \(guards.count) workload(s); this kernel cannot poison pages (no UFFDIO_POISON), so the workloads were killed (pids \(stopped.map(String.init).joined(separator: ", ")))" + (unknown > 0 ? "; \(unknown) could not be stopped: their userfaultfds stay open here until they exit (faults wait, never zeros)" : " (never zeros)"))
            // The copies not closed above are held until their workloads are gone; one
            // without a known owner, for as long as this process lives.
            if guards.values.contains(where: { $0.ownerPidfd < 0 }) { while true { pause() } }
            for pidfd in guards.values.map(\.ownerPidfd) {
                var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
                while poll(&p, 1, -1) < 0 && errno == EINTR {}
            }
            return status
        }
        var pages = 0
        for g in guards.values {
            for r in g.ranges {
                let n = pager_poison_missing(g.uffd.rawValue, r.range.start, r.range.length, r.pageSize)
                if n > 0 { pages += Int(n) }
            }
            try? g.uffd.close()
        }
        say("pagerd (pid \(daemon)) ended holding the memory of \(guards.count) workload(s): \(pages) pages not yet local were poisoned (the workloads get SIGBUS there, never zeros)")
        return status
    }

    /// Whether `descriptor` is an open socket (`fstat`): the guardian refuses to start by hand.
    public static func isSocket(_ descriptor: FileDescriptor) -> Bool {
        var status = stat()
        return fstat(descriptor.rawValue, &status) == 0 && (status.st_mode & S_IFMT) == S_IFSOCK
    }

    private static func say(_ line: String) {
        // write(2) on descriptor 2: one line, one call, nothing buffered when the process ends.
        let bytes = Array("pagerd guardian: \(line)\n".utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}
