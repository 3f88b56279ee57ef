import CPagerKernel
import Glibc
import SystemPackage

/// The `PAGEMAP_SCAN` ioctl (Linux 6.7+) on `/proc/PID/pagemap`: finds pages by category
/// and, with write-protect matching, re-protects the ones it reports in the same call.
///
/// With a userfaultfd registered in WP mode with `UFFD_FEATURE_WP_ASYNC`, writes to
/// protected pages resolve themselves in the kernel and mark the page written; one
/// scan then returns exactly the pages written since the previous scan.
public final class PagemapScanner: @unchecked Sendable {
    private let descriptor: FileDescriptor
    private let vecCapacity: Int
    private let vec: UnsafeMutablePointer<page_region>

    /// `PAGE_IS_*` categories.
    public struct Categories: OptionSet, Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        public static let wpAllowed = Categories(rawValue: UInt64(PAGE_IS_WPALLOWED))
        public static let written = Categories(rawValue: UInt64(PAGE_IS_WRITTEN))
        public static let file = Categories(rawValue: UInt64(PAGE_IS_FILE))
        public static let present = Categories(rawValue: UInt64(PAGE_IS_PRESENT))
        public static let swapped = Categories(rawValue: UInt64(PAGE_IS_SWAPPED))
        public static let pfnZero = Categories(rawValue: UInt64(PAGE_IS_PFNZERO))
        public static let huge = Categories(rawValue: UInt64(PAGE_IS_HUGE))
    }

    /// `PM_SCAN_*` flags.
    public struct Flags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        /// Write-protect the pages that matched (`PM_SCAN_WP_MATCHING`).
        public static let writeProtectMatching = Flags(rawValue: UInt64(PM_SCAN_WP_MATCHING))
        /// Fail with EPERM on a page not registered for async WP (`PM_SCAN_CHECK_WPASYNC`).
        public static let checkWPAsync = Flags(rawValue: UInt64(PM_SCAN_CHECK_WPASYNC))
    }

    /// One `struct page_region` returned by the kernel.
    public struct Region: Equatable, Sendable {
        public var range: AddressRange
        public var categories: Categories
    }

    /// Opens `/proc/self/pagemap`, or `/proc/PID/pagemap` for another process (which needs
    /// ptrace access to it, e.g. root). `vecCapacity` regions are returned per ioctl.
    public init(pid: Int32? = nil, vecCapacity: Int = 512) throws(KernelError) {
        let path = pid.map { "/proc/\($0)/pagemap" } ?? "/proc/self/pagemap"
        do { descriptor = try FileDescriptor.open(path, .readOnly, options: .closeOnExec) } catch {
            throw KernelError("open", error, detail: path)
        }
        self.vecCapacity = vecCapacity
        vec = .allocate(capacity: vecCapacity)
    }

    deinit {
        vec.deallocate()
        try? descriptor.close()
    }

    /// One `PAGEMAP_SCAN` call: returns the regions found (at most `vecCapacity`) and the
    /// address where the walk stopped.
    public func scanOnce(_ range: AddressRange, flags: Flags = [], required: Categories = [],
                         anyOf: Categories = [], inverted: Categories = [], report: Categories,
                         maxPages: UInt64 = 0) throws(KernelError) -> (regions: [Region], walkEnd: UInt64) {
        var arg = pm_scan_arg()
        arg.size = UInt64(MemoryLayout<pm_scan_arg>.size)
        arg.flags = flags.rawValue
        arg.start = range.start
        arg.end = range.end
        arg.vec = UInt64(UInt(bitPattern: vec))
        arg.vec_len = UInt64(vecCapacity)
        arg.max_pages = maxPages
        arg.category_inverted = inverted.rawValue
        arg.category_mask = required.rawValue
        arg.category_anyof_mask = anyOf.rawValue
        arg.return_mask = report.rawValue
        let n = pager_pagemap_scan(descriptor.rawValue, &arg)
        if n < 0 { throw KernelError("PAGEMAP_SCAN", negatedErrno: Int32(n), detail: "\(range)") }
        var regions: [Region] = []
        regions.reserveCapacity(n)
        for i in 0..<n {
            let r = vec[i]
            regions.append(Region(range: AddressRange(start: r.start, length: r.end - r.start),
                                  categories: Categories(rawValue: r.categories)))
        }
        return (regions, arg.walk_end)
    }

    /// All pages in `range` written since they were last protected, as merged address
    /// ranges; with `reprotect` they are write-protected again in the same calls, so the next
    /// call reports only newer writes. Needs a WP-async userfaultfd registration on `range`.
    public func writtenRanges(in range: AddressRange, reprotect: Bool) throws(KernelError) -> [AddressRange] {
        var result: [AddressRange] = []
        var cursor = range.start
        while cursor < range.end {
            let (regions, walkEnd) = try scanOnce(
                AddressRange(start: cursor, length: range.end - cursor),
                flags: reprotect ? [.writeProtectMatching, .checkWPAsync] : [],
                required: .written, report: .written)
            for region in regions {
                // Clip to what was not reported already: a resumed walk may start inside the
                // last region of the previous call.
                let start = max(region.range.start, cursor)
                guard start < region.range.end else { continue }
                if let last = result.last, last.end == start {
                    result[result.count - 1].length += region.range.end - start
                } else {
                    result.append(AddressRange(start: start, length: region.range.end - start))
                }
            }
            // Fewer regions than the buffer holds means the walk covered the whole range: on
            // this kernel walk_end can stop short of `end` in that case although every page was
            // visited, and resuming from it would report pages twice.
            if regions.count < vecCapacity || walkEnd <= cursor { break }
            cursor = walkEnd
        }
        return result
    }
}
