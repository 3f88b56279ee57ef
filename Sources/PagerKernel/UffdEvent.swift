import CPagerKernel

/// One message read from a userfaultfd (`struct uffd_msg`, 32 bytes).
public enum UffdEvent: Equatable, Sendable {
    /// `UFFD_EVENT_PAGEFAULT`: a thread faulted at `address` and waits for it to be resolved.
    case pageFault(address: UInt64, flags: PageFaultFlags, threadID: UInt32)
    /// `UFFD_EVENT_FORK`: the process forked; `descriptor` is a new userfaultfd for the
    /// child's copy of the registered memory, now owned by the reader.
    case fork(descriptor: Int32)
    /// `UFFD_EVENT_REMAP`: `mremap` moved `[from, from+length)` to `to`.
    case remap(from: UInt64, to: UInt64, length: UInt64)
    /// `UFFD_EVENT_REMOVE`: `madvise(MADV_DONTNEED/REMOVE)` dropped `[start, end)`; the pages
    /// will fault as missing again. A fetch in flight for them must not be installed.
    case remove(start: UInt64, end: UInt64)
    /// `UFFD_EVENT_UNMAP`: `munmap` removed `[start, end)` from the registration.
    case unmap(start: UInt64, end: UInt64)
    /// An event code this layer does not know.
    case unknown(code: UInt8)

    /// `sizeof(struct uffd_msg)`.
    public static let messageSize = 32

    /// `UFFD_PAGEFAULT_FLAG_*`.
    public struct PageFaultFlags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        public static let write = PageFaultFlags(rawValue: UInt64(UFFD_PAGEFAULT_FLAG_WRITE))
        public static let writeProtect = PageFaultFlags(rawValue: UInt64(UFFD_PAGEFAULT_FLAG_WP))
        public static let minor = PageFaultFlags(rawValue: UInt64(UFFD_PAGEFAULT_FLAG_MINOR))
    }

    /// Decodes one `struct uffd_msg` (native byte order: it comes from the local kernel).
    public init(message: UnsafeRawBufferPointer) {
        precondition(message.count >= UffdEvent.messageSize)
        func u64(_ offset: Int) -> UInt64 { message.loadUnaligned(fromByteOffset: offset, as: UInt64.self) }
        func u32(_ offset: Int) -> UInt32 { message.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }
        // Layout: u8 event, u8/u16/u32 reserved, then the 24-byte union at offset 8.
        let code = message[0]
        switch Int32(code) {
        case UFFD_EVENT_PAGEFAULT:
            self = .pageFault(address: u64(16), flags: PageFaultFlags(rawValue: u64(8)), threadID: u32(24))
        case UFFD_EVENT_FORK:
            self = .fork(descriptor: Int32(bitPattern: u32(8)))
        case UFFD_EVENT_REMAP:
            self = .remap(from: u64(8), to: u64(16), length: u64(24))
        case UFFD_EVENT_REMOVE:
            self = .remove(start: u64(8), end: u64(16))
        case UFFD_EVENT_UNMAP:
            self = .unmap(start: u64(8), end: u64(16))
        default:
            self = .unknown(code: code)
        }
    }
}
