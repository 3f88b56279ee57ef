import CPagerKernel
import Glibc
import SystemPackage

/// A userfaultfd: the kernel object that reports faults on registered memory and accepts
/// the ioctls that resolve them.
///
/// One instance owns one descriptor and closes it on deinit. The ioctls are safe to call
/// from several threads at once (the kernel serialises what it must), so a fault thread
/// and a background installer can share an instance.
public final class Userfaultfd: @unchecked Sendable {
    private let descriptor: FileDescriptor
    /// Features enabled by `UFFDIO_API` (what was asked for; the kernel writes back every
    /// feature it supports, not the enabled set). Empty when adopted from another process.
    public private(set) var features: Features = []
    /// The ioctls `UFFDIO_API` reported as supported.
    public private(set) var apiIoctls: Ioctls = []

    /// How to create the descriptor.
    public enum Source: Sendable {
        /// The `userfaultfd(2)` system call.
        case syscall
        /// `ioctl(USERFAULTFD_IOC_NEW)` on `/dev/userfaultfd` (Linux 6.1+), which lets an
        /// administrator grant access by file permissions instead of a sysctl.
        case device
        /// The system call, then `/dev/userfaultfd` if the call is not permitted (an
        /// unprivileged process with `vm.unprivileged_userfaultfd` 0, given the device by its
        /// group: the pager's udev rule gives it to group kvm, mode 0660).
        case automatic
    }

    /// Creates a userfaultfd, non-blocking and close-on-exec. Call ``negotiate(_:)`` next.
    ///
    /// - Parameter userModeOnly: only handle faults from user space (`UFFD_USER_MODE_ONLY`),
    ///   which unprivileged users need when `vm.unprivileged_userfaultfd` is 0.
    ///   The corresponding C function is `userfaultfd`.
    public init(source: Source = .automatic, userModeOnly: Bool = false) throws(KernelError) {
        descriptor = try Userfaultfd.create(source, flags: O_CLOEXEC | O_NONBLOCK | (userModeOnly ? UFFD_USER_MODE_ONLY : 0))
    }

    private static func create(_ source: Source, flags: Int32) throws(KernelError) -> FileDescriptor {
        switch source {
        case .automatic:
            do { return try create(.syscall, flags: flags) } catch let e where e.errno == .notPermitted {
                do { return try create(.device, flags: flags) } catch {
                    throw KernelError("userfaultfd", .notPermitted,
                                      detail: "not permitted, and /dev/userfaultfd: \(error) (run as root, give this user /dev/userfaultfd, or set vm.unprivileged_userfaultfd=1)")
                }
            }
        case .syscall:
            let fd = pager_userfaultfd(flags)
            if fd < 0 { throw KernelError("userfaultfd", negatedErrno: fd) }
            return FileDescriptor(rawValue: fd)
        case .device:
            let dev: FileDescriptor
            do {
                dev = try FileDescriptor.open("/dev/userfaultfd", .readWrite, options: .closeOnExec)
            } catch {
                throw KernelError("open", error, detail: "/dev/userfaultfd")
            }
            defer { try? dev.close() }
            let fd = pager_userfaultfd_dev_new(dev.rawValue, flags)
            if fd < 0 { throw KernelError("USERFAULTFD_IOC_NEW", negatedErrno: fd) }
            return FileDescriptor(rawValue: fd)
        }
    }

    /// Takes ownership of a userfaultfd created elsewhere, typically received over a Unix
    /// socket from the process whose memory it covers. Its API handshake was done by that
    /// process, so ``features`` stays empty. The descriptor is switched to non-blocking.
    public init(adopting fd: FileDescriptor) throws(KernelError) {
        descriptor = fd
        let fl = fcntl(fd.rawValue, F_GETFL)
        if fl < 0 || fcntl(fd.rawValue, F_SETFL, fl | O_NONBLOCK) < 0 {
            throw KernelError("fcntl", Errno(rawValue: Glibc.errno), detail: "O_NONBLOCK on adopted userfaultfd")
        }
    }

    deinit { try? descriptor.close() }

    /// Runs `body` with the raw descriptor, for `poll` or for passing it to another process.
    public func withUnsafeDescriptor<R>(_ body: (FileDescriptor) throws -> R) rethrows -> R {
        try body(descriptor)
    }

    // MARK: Features

    /// `UFFD_FEATURE_*` bits of `UFFDIO_API`.
    public struct Features: OptionSet, Sendable, Hashable, CustomStringConvertible {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }

        public static let pagefaultFlagWP = Features(rawValue: UInt64(UFFD_FEATURE_PAGEFAULT_FLAG_WP))
        public static let eventFork = Features(rawValue: UInt64(UFFD_FEATURE_EVENT_FORK))
        public static let eventRemap = Features(rawValue: UInt64(UFFD_FEATURE_EVENT_REMAP))
        public static let eventRemove = Features(rawValue: UInt64(UFFD_FEATURE_EVENT_REMOVE))
        public static let missingHugetlbfs = Features(rawValue: UInt64(UFFD_FEATURE_MISSING_HUGETLBFS))
        public static let missingShmem = Features(rawValue: UInt64(UFFD_FEATURE_MISSING_SHMEM))
        public static let eventUnmap = Features(rawValue: UInt64(UFFD_FEATURE_EVENT_UNMAP))
        /// Faults raise SIGBUS instead of waiting for a handler.
        public static let sigbus = Features(rawValue: UInt64(UFFD_FEATURE_SIGBUS))
        public static let threadID = Features(rawValue: UInt64(UFFD_FEATURE_THREAD_ID))
        public static let minorHugetlbfs = Features(rawValue: UInt64(UFFD_FEATURE_MINOR_HUGETLBFS))
        public static let minorShmem = Features(rawValue: UInt64(UFFD_FEATURE_MINOR_SHMEM))
        public static let exactAddress = Features(rawValue: UInt64(UFFD_FEATURE_EXACT_ADDRESS))
        public static let wpHugetlbfsShmem = Features(rawValue: UInt64(UFFD_FEATURE_WP_HUGETLBFS_SHMEM))
        public static let wpUnpopulated = Features(rawValue: UInt64(UFFD_FEATURE_WP_UNPOPULATED))
        /// `UFFDIO_POISON`: mark a range so that touching it raises SIGBUS.
        public static let poison = Features(rawValue: UInt64(UFFD_FEATURE_POISON))
        /// Write faults on write-protected pages resolve themselves and the page is
        /// reported as written by `PAGEMAP_SCAN`.
        public static let wpAsync = Features(rawValue: UInt64(UFFD_FEATURE_WP_ASYNC))
        public static let move = Features(rawValue: UInt64(UFFD_FEATURE_MOVE))

        /// What the destination side of a migration asks for.
        public static let postcopy: Features = [
            .eventFork, .eventRemap, .eventRemove, .eventUnmap, .missingHugetlbfs, .missingShmem,
            .threadID, .exactAddress,
        ]

        public var description: String {
            let names: [(Features, String)] = [
                (.pagefaultFlagWP, "PAGEFAULT_FLAG_WP"), (.eventFork, "EVENT_FORK"), (.eventRemap, "EVENT_REMAP"),
                (.eventRemove, "EVENT_REMOVE"), (.missingHugetlbfs, "MISSING_HUGETLBFS"),
                (.missingShmem, "MISSING_SHMEM"), (.eventUnmap, "EVENT_UNMAP"), (.sigbus, "SIGBUS"),
                (.threadID, "THREAD_ID"), (.minorHugetlbfs, "MINOR_HUGETLBFS"), (.minorShmem, "MINOR_SHMEM"),
                (.exactAddress, "EXACT_ADDRESS"), (.wpHugetlbfsShmem, "WP_HUGETLBFS_SHMEM"),
                (.wpUnpopulated, "WP_UNPOPULATED"), (.poison, "POISON"), (.wpAsync, "WP_ASYNC"), (.move, "MOVE"),
            ]
            let known = names.filter { contains($0.0) }.map(\.1)
            let rest = rawValue & ~names.reduce(0) { $0 | $1.0.rawValue }
            return (known + (rest == 0 ? [] : [hex(rest)])).joined(separator: "|")
        }
    }

    /// Bits of the `ioctls` masks reported by `UFFDIO_API` and `UFFDIO_REGISTER`.
    public struct Ioctls: OptionSet, Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        public static let register = Ioctls(rawValue: 1 << UInt64(_UFFDIO_REGISTER))
        public static let unregister = Ioctls(rawValue: 1 << UInt64(_UFFDIO_UNREGISTER))
        public static let api = Ioctls(rawValue: 1 << UInt64(_UFFDIO_API))
        public static let wake = Ioctls(rawValue: 1 << UInt64(_UFFDIO_WAKE))
        public static let copy = Ioctls(rawValue: 1 << UInt64(_UFFDIO_COPY))
        public static let zeropage = Ioctls(rawValue: 1 << UInt64(_UFFDIO_ZEROPAGE))
        public static let writeprotect = Ioctls(rawValue: 1 << UInt64(_UFFDIO_WRITEPROTECT))
        public static let `continue` = Ioctls(rawValue: 1 << UInt64(_UFFDIO_CONTINUE))
        public static let poison = Ioctls(rawValue: 1 << UInt64(_UFFDIO_POISON))
    }

    /// `UFFDIO_API`: asks for `required` plus whatever of `optional` the kernel has, and
    /// returns the features granted. Throws if a required feature is missing, naming it.
    @discardableResult
    public func negotiate(_ required: Features, optional: Features = []) throws(KernelError) -> Features {
        // The kernel rejects the whole request (EINVAL) if any asked feature is unknown, so
        // first learn what it supports with a probe on a throwaway descriptor: UFFDIO_API may
        // be called only once per descriptor.
        let supported = try Userfaultfd.supportedFeatures()
        let missing = required.subtracting(supported)
        if !missing.isEmpty {
            throw KernelError("UFFDIO_API", .notSupported, detail: "kernel lacks features \(missing)")
        }
        var granted: UInt64 = 0
        var ioctls: UInt64 = 0
        let want = required.union(optional.intersection(supported))
        let r = pager_uffdio_api(descriptor.rawValue, want.rawValue, &granted, &ioctls)
        if r < 0 { throw KernelError("UFFDIO_API", negatedErrno: r, detail: "features \(want)") }
        features = want
        apiIoctls = Ioctls(rawValue: ioctls)
        return features
    }

    /// The features this kernel supports, from `UFFDIO_API` with no features requested on a
    /// throwaway descriptor.
    public static func supportedFeatures() throws(KernelError) -> Features {
        let probe = try Userfaultfd()
        var granted: UInt64 = 0
        var ioctls: UInt64 = 0
        let r = pager_uffdio_api(probe.descriptor.rawValue, 0, &granted, &ioctls)
        if r < 0 { throw KernelError("UFFDIO_API", negatedErrno: r, detail: "probe") }
        return Features(rawValue: granted)
    }

    // MARK: Registration

    /// `UFFDIO_REGISTER_MODE_*`.
    public struct Mode: OptionSet, Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// Faults on pages not present (resolved with COPY or ZEROPAGE).
        public static let missing = Mode(rawValue: UInt64(UFFDIO_REGISTER_MODE_MISSING))
        /// Writes to write-protected pages.
        public static let writeProtect = Mode(rawValue: UInt64(UFFDIO_REGISTER_MODE_WP))
        /// Faults on pages present in the page cache but not mapped (resolved with CONTINUE).
        public static let minor = Mode(rawValue: UInt64(UFFDIO_REGISTER_MODE_MINOR))
    }

    /// `UFFDIO_REGISTER`: starts reporting faults of `mode` in the range. Returns the ioctls
    /// usable on it. The range must be page-aligned (huge-page-aligned on hugetlbfs).
    @discardableResult
    public func register(_ range: AddressRange, mode: Mode) throws(KernelError) -> Ioctls {
        var ioctls: UInt64 = 0
        let r = pager_uffdio_register(descriptor.rawValue, range.start, range.length, mode.rawValue, &ioctls)
        if r < 0 { throw KernelError("UFFDIO_REGISTER", negatedErrno: r, detail: "\(range)") }
        return Ioctls(rawValue: ioctls)
    }

    /// `UFFDIO_UNREGISTER`.
    public func unregister(_ range: AddressRange) throws(KernelError) {
        let r = pager_uffdio_unregister(descriptor.rawValue, range.start, range.length)
        if r < 0 { throw KernelError("UFFDIO_UNREGISTER", negatedErrno: r, detail: "\(range)") }
    }

    // MARK: Resolving faults

    /// `UFFDIO_COPY`: atomically fills missing pages at `destination` with `length` bytes
    /// from `source` and (unless `dontWake`) wakes the threads waiting on them.
    ///
    /// - Parameter writeProtect: install the pages write-protected (`UFFDIO_COPY_MODE_WP`).
    @inline(__always)
    public func copy(to destination: UInt64, from source: UnsafeRawPointer, length: UInt64,
                     dontWake: Bool = false, writeProtect: Bool = false) throws(KernelError) -> InstallOutcome {
        var mode: UInt64 = 0
        if dontWake { mode |= UInt64(UFFDIO_COPY_MODE_DONTWAKE) }
        if writeProtect { mode |= UInt64(UFFDIO_COPY_MODE_WP) }
        var copied: Int64 = 0
        let r = pager_uffdio_copy(descriptor.rawValue, destination, UInt64(UInt(bitPattern: source)), length, mode, &copied)
        return try InstallOutcome(r, done: copied, length: length, operation: "UFFDIO_COPY", at: destination)
    }

    /// `UFFDIO_ZEROPAGE`: maps the zero page over missing pages (anonymous memory only).
    public func zeroPage(_ range: AddressRange, dontWake: Bool = false) throws(KernelError) -> InstallOutcome {
        var zeroed: Int64 = 0
        let mode = dontWake ? UInt64(UFFDIO_ZEROPAGE_MODE_DONTWAKE) : 0
        let r = pager_uffdio_zeropage(descriptor.rawValue, range.start, range.length, mode, &zeroed)
        return try InstallOutcome(r, done: zeroed, length: range.length, operation: "UFFDIO_ZEROPAGE", at: range.start)
    }

    /// `UFFDIO_CONTINUE`: maps pages already in the page cache (MINOR faults).
    public func continueMapping(_ range: AddressRange, dontWake: Bool = false) throws(KernelError) -> InstallOutcome {
        var mapped: Int64 = 0
        let mode = dontWake ? UInt64(UFFDIO_CONTINUE_MODE_DONTWAKE) : 0
        let r = pager_uffdio_continue(descriptor.rawValue, range.start, range.length, mode, &mapped)
        return try InstallOutcome(r, done: mapped, length: range.length, operation: "UFFDIO_CONTINUE", at: range.start)
    }

    /// `UFFDIO_POISON`: makes every later access to the range raise SIGBUS. The destination
    /// uses it for pages that cannot be fetched, so the workload stops instead of reading
    /// zeros or stale data.
    public func poison(_ range: AddressRange, dontWake: Bool = false) throws(KernelError) -> InstallOutcome {
        var updated: Int64 = 0
        let mode = dontWake ? UInt64(UFFDIO_POISON_MODE_DONTWAKE) : 0
        let r = pager_uffdio_poison(descriptor.rawValue, range.start, range.length, mode, &updated)
        return try InstallOutcome(r, done: updated, length: range.length, operation: "UFFDIO_POISON", at: range.start)
    }

    /// `UFFDIO_WAKE`: wakes threads waiting on faults in the range (after DONTWAKE installs,
    /// or after finding a page already present).
    public func wake(_ range: AddressRange) throws(KernelError) {
        let r = pager_uffdio_wake(descriptor.rawValue, range.start, range.length)
        if r < 0 { throw KernelError("UFFDIO_WAKE", negatedErrno: r, detail: "\(range)") }
    }

    /// `UFFDIO_WRITEPROTECT`: sets (`protect: true`) or clears write protection.
    public func writeProtect(_ range: AddressRange, protect: Bool, dontWake: Bool = false) throws(KernelError) {
        var mode: UInt64 = protect ? UInt64(UFFDIO_WRITEPROTECT_MODE_WP) : 0
        if dontWake { mode |= UInt64(UFFDIO_WRITEPROTECT_MODE_DONTWAKE) }
        let r = pager_uffdio_writeprotect(descriptor.rawValue, range.start, range.length, mode)
        if r < 0 { throw KernelError("UFFDIO_WRITEPROTECT", negatedErrno: r, detail: "\(range)") }
    }

    // MARK: Events

    /// Reads pending events without blocking (the descriptor is `O_NONBLOCK`). Returns an
    /// empty array when none is pending.
    public func readEvents(max: Int = 64) throws(KernelError) -> [UffdEvent] {
        var events: [UffdEvent] = []
        try readEvents(into: &events, max: max)
        return events
    }

    /// Reads pending events into `events` (cleared first), so a fault loop can reuse one array.
    public func readEvents(into events: inout [UffdEvent], max: Int = 64) throws(KernelError) {
        events.removeAll(keepingCapacity: true)
        let size = UffdEvent.messageSize
        try withUnsafeTemporaryAllocation(byteCount: size * max, alignment: 8) { (buffer) throws(KernelError) in
            let n = read(descriptor.rawValue, buffer.baseAddress, buffer.count)
            if n < 0 {
                let e = Glibc.errno
                if e == EAGAIN || e == EINTR { return }
                throw KernelError("read", Errno(rawValue: e), detail: "userfaultfd events")
            }
            var offset = 0
            while offset + size <= n {
                events.append(UffdEvent(message: UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + size])))
                offset += size
            }
        }
    }

    /// Waits until events are readable or `other` is readable or hung up (`poll` on both).
    /// Returns (events ready, other ready).
    public func waitReadable(or other: FileDescriptor, timeoutMilliseconds: Int32) throws(KernelError) -> (Bool, Bool) {
        let ready = try pollReadable([descriptor, other], timeoutMilliseconds: timeoutMilliseconds, detail: "userfaultfd")
        return (ready[0], ready[1])
    }

    /// Waits until events are readable (`poll`) or `timeoutMilliseconds` passes (-1: forever).
    /// Returns true if readable. Also returns true on POLLERR/POLLHUP, when the next read tells.
    public func waitReadable(timeoutMilliseconds: Int32) throws(KernelError) -> Bool {
        try pollReadable([descriptor], timeoutMilliseconds: timeoutMilliseconds, detail: "userfaultfd")[0]
    }
}

/// The outcome of an install ioctl (COPY, ZEROPAGE, CONTINUE, POISON): the cases a fault
/// handler must expect and act on, none of them a bug.
public enum InstallOutcome: Equatable, Sendable {
    /// All `bytes` were installed.
    case installed(bytes: UInt64)
    /// A page in the range was already present (`EEXIST`): it arrived another way. Threads
    /// waiting on it may need `UFFDIO_WAKE`. `installedBefore` bytes were installed first.
    case alreadyPresent(installedBefore: UInt64)
    /// The mapping changed under us (`EAGAIN`, e.g. a concurrent `mremap` or `MADV_DONTNEED`);
    /// `installedBefore` bytes were installed. Retry the rest after reading events.
    case retry(installedBefore: UInt64)
    /// The target process is gone (`ESRCH`) or its memory is being torn down.
    case targetGone

    @inline(__always)
    init(_ r: Int32, done: Int64, length: UInt64, operation: String, at address: UInt64) throws(KernelError) {
        if r == 0 {
            self = .installed(bytes: done > 0 ? UInt64(done) : length)
            return
        }
        let before = done > 0 ? UInt64(done) : 0
        switch -r {
        case EEXIST: self = .alreadyPresent(installedBefore: before)
        case EAGAIN: self = .retry(installedBefore: before)
        case ESRCH: self = .targetGone
        default:
            throw KernelError(operation, negatedErrno: r, detail: "\(AddressRange(start: address, length: length))")
        }
    }
}

/// A half-open range of virtual addresses `[start, start + length)`.
public struct AddressRange: Hashable, Sendable, CustomStringConvertible {
    public var start: UInt64
    public var length: UInt64
    public init(start: UInt64, length: UInt64) {
        self.start = start
        self.length = length
    }
    public init(_ pointer: UnsafeRawPointer, length: Int) {
        self.init(start: UInt64(UInt(bitPattern: pointer)), length: UInt64(length))
    }
    public var end: UInt64 { start + length }
    public var description: String { "\(hex(start))-\(hex(end))" }
}
