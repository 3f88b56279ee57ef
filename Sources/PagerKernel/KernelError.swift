import SystemPackage

/// A system call failed in a way the caller did not expect.
///
/// Expected outcomes (a page already present, a mapping that changed, a target process
/// that is gone) are not errors: they come back as values such as ``InstallOutcome``.
public struct KernelError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The operation, named after the kernel call (`"UFFDIO_REGISTER"`, `"mmap"`, ...).
    public var operation: String
    /// The errno the kernel returned.
    public var errno: Errno
    /// What the operation was applied to, for the message (a path, an address range).
    public var detail: String

    public init(_ operation: String, _ errno: Errno, detail: String = "") {
        self.operation = operation
        self.errno = errno
        self.detail = detail
    }

    /// Wraps an error thrown by swift-system (always an `Errno` there).
    public init(_ operation: String, _ error: any Error, detail: String = "") {
        self.init(operation, (error as? Errno) ?? .ioError, detail: detail)
    }

    init(_ operation: String, negatedErrno: Int32, detail: String = "") {
        self.init(operation, Errno(rawValue: -negatedErrno), detail: detail)
    }

    public var description: String {
        let target = detail.isEmpty ? "" : " (\(detail))"
        return "\(operation) failed\(target): \(errno) [errno \(errno.rawValue)]"
    }
}

/// Formats an address or length the way the kernel's messages do.
@inlinable
public func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

@inlinable
public func hex(_ value: Int) -> String { hex(UInt64(bitPattern: Int64(value))) }
