import CPagerKernel
import Glibc
import Synchronization
import SystemPackage

/// Memory this process must poison if it stops serving it before every page is local.
///
/// A destination that holds a workload's userfaultfd is the only thing that can make a
/// missing page arrive: if it exits holding pages that are not local (an error, a refusal, a
/// signal, a trap in our own code), the kernel drops the userfaultfd and the workload reads
/// zeros where its data belongs. A guard poisons the missing pages (`UFFDIO_POISON`: later
/// accesses raise SIGBUS) on every way out: ``poisonMissing()`` explicitly, its deinit if
/// nobody called ``release()``, and the process-wide fatal-signal handler
/// (``installFatalSignalHandlers()``) for crashes and signals. SIGKILL, which runs nothing,
/// is covered by this process's ``Guardian`` where one was started.
///
/// A kernel without `UFFDIO_POISON` (before Linux 6.6, e.g. Debian 12's 6.1) cannot make a
/// page raise SIGBUS: there the guard stops the memory's owner instead (SIGKILL, waited for),
/// on the same ways out, so that a page that cannot be fetched still never reads as zeros.
public final class PoisonGuard: @unchecked Sendable {
    /// Kept so the descriptor stays open (and its number is not reused) while it is guarded.
    private let uffd: Userfaultfd
    private let ranges: [(range: AddressRange, pageSize: Int)]
    /// The process whose memory this is (from the handoff's `SO_PEERCRED`), if another one.
    public let owner: Int32?
    /// Its pidfd, opened now: the one stopped is the process that handed the memory over, even
    /// if its pid is reused later (-1: none).
    private let ownerPidfd: Int32
    private let phase = Mutex(Phase.armed)
    private let slots: [Int32]
    /// The guardian's cover, while the guard is armed.
    private let cover: (guardian: Guardian, id: UInt32)?

    private enum Phase { case armed, poisoned(pages: Int), released }

    /// Guards `ranges` of `uffd` (each with its page size) from now on; `owner` is the process
    /// the memory belongs to when it is not this one.
    public init(uffd: Userfaultfd, ranges: [(range: AddressRange, pageSize: Int)], owner: Int32? = nil) {
        _ = Self.kernelCanPoison
        self.uffd = uffd
        self.ranges = ranges
        self.owner = owner
        let pidfd = owner.map { pager_owner_pidfd($0) } ?? -1
        ownerPidfd = pidfd >= 0 ? pidfd : -1
        slots = ranges.map { [ownerPidfd] r in
            uffd.withUnsafeDescriptor { fd in
                pager_poison_guard_add(fd.rawValue, r.range.start, r.range.length, UInt64(r.pageSize), ownerPidfd)
            }
        }
        cover = Guardian.current.map { guardian in
            (guardian, uffd.withUnsafeDescriptor { guardian.cover(uffd: $0, ranges: ranges, owner: owner) })
        }
    }

    /// Whether this kernel has `UFFDIO_POISON` (`UFFD_FEATURE_POISON`, Linux 6.6), probed once;
    /// the fatal-signal handler learns the answer with the first guard.
    /// A probe that cannot make a userfaultfd (no permission, seccomp, no descriptors left)
    /// falls back to the kernel's version: 6.6 or later can.
    public static let kernelCanPoison: Bool = {
        let can: Bool
        if let features = try? Userfaultfd.supportedFeatures() {
            can = features.contains(.poison)
        } else {
            let release = (try? readWholeFile("/proc/sys/kernel/osrelease")) ?? ""
            let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
            can = numbers.count < 2 || (numbers[0], numbers[1]) >= (6, 6)
        }
        pager_poison_guard_set_unsupported(can ? 0 : 1)
        return can
    }()

    /// Why the owner could not be stopped where the kernel cannot poison (nil: it was, or
    /// nothing needed it). Its userfaultfd is then held open for as long as this process
    /// lives, and the guardian keeps its copy: its faults wait rather than read zeros.
    public var ownerStopFailure: String? { stopFailure.withLock { $0 } }
    private let stopFailure = Mutex<String?>(nil)
    /// Descriptors held open for workloads that could not be stopped (see ``ownerStopFailure``).
    private static let held = Mutex<[Userfaultfd]>([])

    /// What became of pages that could not be fetched, for messages: "were poisoned (...)",
    /// or, on a kernel without `UFFDIO_POISON`, that their workload was killed.
    public static var fateOfMissingPages: String {
        kernelCanPoison ? "were poisoned (the workload gets SIGBUS there, never zeros)"
            : "could not be poisoned (this kernel has no UFFDIO_POISON, Linux 6.6): the workload was killed instead (never zeros)"
    }

    /// Where the kernel cannot poison: kills `owner` and waits until it is gone (before the
    /// userfaultfd that holds its missing pages closes). Nil when it is gone, else why not.
    public static func stopOwner(_ owner: Int32) -> String? {
        describeStop(pager_stop_owner(owner))
    }

    /// A `pager_stop_owner*` result as ``stopOwner(_:)`` reports it.
    private static func describeStop(_ result: Int32) -> String? { result == 0 ? nil : "\(Errno(rawValue: -result))" }

    /// Keeps `uffd` open for as long as this process lives: for a workload that could not be
    /// stopped where the kernel cannot poison (closing it would let the workload read zeros).
    public static func holdOpen(_ uffd: Userfaultfd) { held.withLock { $0.append(uffd) } }

    deinit {
        if case .armed = phase.withLock({ $0 }) { poisonMissing() }
        for slot in slots where slot >= 0 { pager_poison_guard_remove(slot) }
        if let cover { cover.guardian.uncover(cover.id) }
        if ownerPidfd >= 0 { close(ownerPidfd) }
    }

    /// Whether every range got a slot in the fatal-signal handler's list (256 slots per
    /// process); a range without one is still poisoned on every other way out.
    public var coveredByHandler: Bool { slots.allSatisfy { $0 >= 0 } }

    /// Poisons every page of the guarded ranges that is not present, skipping those that are,
    /// and wakes their waiters. Done once; later calls return the same count.
    @discardableResult
    public func poisonMissing() -> Int {
        phase.withLock { phase in
            switch phase {
            case .poisoned(let pages): return pages
            case .released: return 0
            case .armed:
                var pages = 0
                if !Self.kernelCanPoison {
                    // Nothing can be poisoned: the owner goes, with every page it was missing.
                    let failure: String?
                    if owner == nil {
                        failure = "the workload's process is not known"
                    } else if ownerPidfd < 0 {
                        failure = Self.stopOwner(owner!)
                    } else {
                        failure = Self.describeStop(pager_stop_owner_pidfd(ownerPidfd))
                    }
                    if let failure {
                        stopFailure.withLock { $0 = failure }
                        Self.holdOpen(uffd)
                    } else {
                        pages = ranges.reduce(0) { $0 + Int($1.range.length) / $1.pageSize }
                        if let cover { cover.guardian.uncover(cover.id) }
                    }
                    phase = .poisoned(pages: pages)
                    return pages
                }
                for r in ranges {
                    let n = uffd.withUnsafeDescriptor { fd in
                        pager_poison_missing(fd.rawValue, r.range.start, r.range.length, UInt64(r.pageSize))
                    }
                    if n > 0 { pages += Int(n) }
                }
                phase = .poisoned(pages: pages)
                if let cover { cover.guardian.uncover(cover.id) }
                return pages
            }
        }
    }

    /// The owner of the memory poisoned what was missing itself (precisely, from its own
    /// bookkeeping): ``poisonMissing()`` returns `pages` from now on instead of walking the
    /// ranges again. The fatal-signal handler still covers the ranges until deinit.
    public func recordPoisoned(pages: Int) {
        phase.withLock { if case .armed = $0 { $0 = .poisoned(pages: pages) } }
        if let cover { cover.guardian.uncover(cover.id) }
    }

    /// Whether ``release()`` was called.
    public var isReleased: Bool {
        if case .released = phase.withLock({ $0 }) { return true }
        return false
    }

    /// Nothing is left to guard: every page is local, or the memory is gone.
    public func release() {
        phase.withLock { if case .armed = $0 { $0 = .released } }
        for slot in slots where slot >= 0 { pager_poison_guard_remove(slot) }
        if let cover { cover.guardian.uncover(cover.id) }
    }

    /// Poisons what is missing in every guard of this process (for an abort by signal).
    /// Returns the pages poisoned.
    @discardableResult
    public static func poisonAll() -> Int { Int(pager_poison_guard_poison_all()) }

    /// Installs the fatal-signal handler (SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGABRT, SIGFPE,
    /// SIGHUP, SIGQUIT, ...: see `poison_guard.h`): it poisons every guard's missing pages,
    /// then lets the signal end the process as before. Idempotent.
    public static func installFatalSignalHandlers() throws(KernelError) {
        let r = pager_poison_guard_install_handlers()
        if r < 0 { throw KernelError("sigaction", negatedErrno: r, detail: "fatal-signal poison handler") }
    }
}

/// Ends the process at once with `status` (`exit`), from any thread.
public func exitProcess(_ status: Int32) -> Never { exit(status) }

extension Userfaultfd {
    /// Poisons the missing pages of every mapping of process `pid` that is registered for
    /// MISSING faults (`um` in `/proc/PID/smaps`' VmFlags), through this userfaultfd; ranges
    /// registered with another userfaultfd are refused by the kernel and skipped. For a handoff
    /// that is refused (its description of the memory unreadable): the descriptor says nothing
    /// of where the memory is, yet closing it would turn the workload's missing pages into
    /// zeros. Returns the pages poisoned.
    public func poisonRegisteredMappings(ofProcess pid: Int32) throws(KernelError) -> Int {
        var pages = 0
        for vma in try Self.missingRegisteredMappings(smaps: readWholeFile("/proc/\(pid)/smaps")) {
            let n = withUnsafeDescriptor { fd in
                pager_poison_missing(fd.rawValue, vma.range.start, vma.range.length, UInt64(vma.pageSize))
            }
            if n > 0 { pages += Int(n) }
        }
        return pages
    }

    /// The mappings in an smaps text whose VmFlags include `um` (userfaultfd MISSING), with
    /// their kernel page size.
    public static func missingRegisteredMappings(smaps: String) -> [(range: AddressRange, pageSize: Int)] {
        var result: [(range: AddressRange, pageSize: Int)] = []
        var current: (start: UInt64, end: UInt64)?
        var pageSize = 4096
        for line in smaps.split(separator: "\n", omittingEmptySubsequences: true) {
            if let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
               let start = UInt64(line[..<dash], radix: 16), let end = UInt64(line[line.index(after: dash)..<space], radix: 16) {
                current = (start, end)
                pageSize = 4096
            } else if line.hasPrefix("KernelPageSize:") {
                let kib = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 4
                pageSize = kib * 1024
            } else if line.hasPrefix("VmFlags:"), let vma = current {
                if line.split(separator: " ").dropFirst().contains("um") && vma.end > vma.start {
                    result.append((AddressRange(start: vma.start, length: vma.end - vma.start), pageSize))
                }
                current = nil
            }
        }
        return result
    }
}
