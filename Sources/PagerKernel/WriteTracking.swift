import CPagerKernel
import Glibc

/// Finds the pages of a live range written since the last look, with mainline mechanisms
/// only: a userfaultfd registered in write-protect mode with `UFFD_FEATURE_WP_ASYNC` (a write
/// to a protected page un-protects it in the kernel, no handler thread) and `PAGEMAP_SCAN`
/// with `PM_SCAN_WP_MATCHING` (returns the written pages and re-protects them in one call).
public final class WriteTracker: @unchecked Sendable {
    /// Held so the registration lives as long as the tracker (closing it unregisters).
    public let uffd: Userfaultfd
    public let range: AddressRange
    private let scanner: PagemapScanner

    /// Tracks `range` of this process: creates the userfaultfd and registers it.
    public init(ownRange range: AddressRange) throws(KernelError) {
        let uffd = try Userfaultfd()
        // Shared memory and hugetlbfs need their own WP feature; anonymous memory does not.
        _ = try uffd.negotiate([.wpAsync, .wpUnpopulated], optional: [.wpHugetlbfsShmem])
        _ = try uffd.register(range, mode: .writeProtect)
        self.uffd = uffd
        self.range = range
        scanner = try PagemapScanner()
        try protectAll()
    }

    /// Tracks `range` of process `pid` through a userfaultfd that process registered on it in
    /// WP mode with `UFFD_FEATURE_WP_ASYNC` and handed over; scans `/proc/PID/pagemap`.
    public init(handedOver uffd: Userfaultfd, pid: Int32, range: AddressRange) throws(KernelError) {
        self.uffd = uffd
        self.range = range
        scanner = try PagemapScanner(pid: pid)
        do { try protectAll() } catch let e where e.errno == .notPermitted {
            throw KernelError("PAGEMAP_SCAN", .notPermitted,
                              detail: "\(range) of process \(pid) is not registered for asynchronous write-protect (UFFDIO_REGISTER_MODE_WP with UFFD_FEATURE_WP_ASYNC)")
        }
    }

    /// Write-protects the whole range and forgets earlier writes (the start of round 0).
    public func protectAll() throws(KernelError) {
        _ = try scanner.writtenRanges(in: range, reprotect: true)
    }

    /// The ranges written since the last call (or ``protectAll()``), re-protected in the same
    /// `PAGEMAP_SCAN` calls so that a write racing with the scan is reported next time.
    public func takeWritten() throws(KernelError) -> [AddressRange] {
        try scanner.writtenRanges(in: range, reprotect: true)
    }
}

/// Reads another process's memory (`process_vm_readv`), e.g. a workload's RAM served by the
/// source daemon.
public struct ProcessMemory: Sendable {
    public let pid: Int32
    public init(pid: Int32) { self.pid = pid }

    /// Copies `count` bytes at `address` in the process into `buffer`.
    public func read(_ address: UInt64, into buffer: UnsafeMutableRawPointer, count: Int) throws(KernelError) {
        var done = 0
        while done < count {
            let n = pager_process_read(pid, buffer + done, address + UInt64(done), count - done)
            if n < 0 { throw KernelError("process_vm_readv", negatedErrno: Int32(n), detail: "pid \(pid) at \(hex(address + UInt64(done)))") }
            if n == 0 { throw KernelError("process_vm_readv", .ioError, detail: "pid \(pid): nothing readable at \(hex(address + UInt64(done)))") }
            done += n
        }
    }
}

/// Sends `signal` to process `pid` (`kill`).
public func sendSignal(_ signal: Int32, to pid: Int32) throws(KernelError) {
    if kill(pid, signal) < 0 { throw KernelError("kill", negatedErrno: -Glibc.errno, detail: "signal \(signal) to pid \(pid)") }
}

/// Waits until every thread of process `pid` is stopped (state `T` in `/proc/PID/task/*/stat`),
/// at most `timeoutMilliseconds`: after SIGSTOP returns, threads may still be running.
public func waitUntilStopped(_ pid: Int32, timeoutMilliseconds: Int = 5000) throws(KernelError) {
    let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
    while true {
        guard let dir = opendir("/proc/\(pid)/task") else { throw KernelError("opendir", .noSuchProcess, detail: "/proc/\(pid)/task") }
        var allStopped = true
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            guard name.first?.isNumber == true else { continue }
            guard let f = fopen("/proc/\(pid)/task/\(name)/stat", "r") else { continue }
            var buffer = [CChar](repeating: 0, count: 512)
            let line = fgets(&buffer, 512, f).map { _ in String(cString: buffer) } ?? ""
            fclose(f)
            // Field 3, after the parenthesised command name (which may contain spaces).
            if let close = line.lastIndex(of: ")"), let state = line[line.index(after: close)...].dropFirst().first, state != "T" && state != "t" {
                allStopped = false
            }
        }
        closedir(dir)
        if allStopped { return }
        if monotonicNanoseconds() > deadline { throw KernelError("SIGSTOP", .timedOut, detail: "process \(pid) did not stop within \(timeoutMilliseconds) ms") }
        usleep(20)
    }
}
