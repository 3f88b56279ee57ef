import PagerKernel
import SystemPackage

/// A workload's memory handed to the pager: its userfaultfd and where its memory lies.
public struct Handoff: Sendable {
    public var uffd: Userfaultfd
    public var mappings: [RegionMapping]
    /// The connection it came on; kept open while the migration runs (Firecracker keeps it too).
    public var connection: FileDescriptor
}

/// Why a handoff was refused.
public struct HandoffError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
    public init(message: String) { self.message = message }
}

/// Accepts handoffs on a Unix socket in Firecracker's format: one message whose bytes are a
/// JSON array of `{"base_host_virt_addr", "size", "offset", "page_size"}` objects (also
/// `page_size_kib`, as older Firecracker releases send), with the userfaultfd attached as
/// `SCM_RIGHTS`. `offset` is the offset into the served region.
public final class HandoffListener: @unchecked Sendable {
    public let path: String
    private let listener: FileDescriptor

    public init(path: String) throws(KernelError) {
        self.path = path
        listener = try UnixSocket.listen(path: path)
    }

    deinit { try? listener.close() }

    /// Waits for one connection and reads its handoff.
    public func accept() throws -> Handoff {
        let connection = try UnixSocket.accept(listener)
        do {
            return try HandoffListener.read(from: connection)
        } catch {
            try? connection.close()
            throw error
        }
    }

    /// Stops accepting: wakes a thread blocked in ``accept()``.
    public func close() {
        _ = shutdownSocket(listener)
    }

    static let maxMessage = 1 << 20

    /// Reads one handoff message from `connection`.
    public static func read(from connection: FileDescriptor) throws -> Handoff {
        var first = try UnixSocket.receive(connection, maxBytes: 64 << 10, maxDescriptors: 4)
        guard !first.bytes.isEmpty || !first.descriptors.isEmpty else {
            throw HandoffError(message: "handoff connection closed before any message")
        }
        var bytes = first.bytes
        // The JSON may be split across reads of the stream: read until it parses.
        var parsed: JSONValue? = try? JSONReader.parse(bytes)
        while parsed == nil && bytes.count < maxMessage {
            let more = try UnixSocket.receive(connection, maxBytes: 64 << 10, maxDescriptors: 4)
            first.descriptors += more.descriptors
            if more.bytes.isEmpty { break }
            bytes += more.bytes
            parsed = try? JSONReader.parse(bytes)
        }
        let fds = first.descriptors
        guard fds.count == 1 else {
            for fd in fds { try? fd.close() }
            throw HandoffError(message: "handoff must carry exactly one userfaultfd (SCM_RIGHTS), got \(fds.count)")
        }
        let mappings: [RegionMapping]
        do {
            mappings = try parseMappings(bytes)
        } catch {
            try? fds[0].close()
            throw error
        }
        return Handoff(uffd: try Userfaultfd(adopting: fds[0]), mappings: mappings, connection: connection)
    }

    /// Parses the JSON array of mappings.
    public static func parseMappings(_ bytes: [UInt8]) throws -> [RegionMapping] {
        let value: JSONValue
        do { value = try JSONReader.parse(bytes) } catch { throw HandoffError(message: "handoff is not JSON: \(error)") }
        guard case .array(let items) = value, !items.isEmpty else {
            throw HandoffError(message: "handoff must be a non-empty JSON array of mappings")
        }
        return try items.enumerated().map { (i, item) in
            guard let base = item["base_host_virt_addr"]?.uint64, let size = item["size"]?.uint64, let offset = item["offset"]?.uint64 else {
                throw HandoffError(message: "mapping \(i) needs unsigned integers base_host_virt_addr, size and offset")
            }
            let pageSize: UInt64
            if let p = item["page_size"]?.uint64 { pageSize = p }
            else if let k = item["page_size_kib"]?.uint64 { pageSize = k * 1024 }
            else { throw HandoffError(message: "mapping \(i) needs page_size (bytes) or page_size_kib") }
            guard pageSize == 4096 || pageSize == 2 << 20 || pageSize == 1 << 30 else {
                throw HandoffError(message: "mapping \(i): page size \(pageSize) is not 4 KiB, 2 MiB or 1 GiB")
            }
            guard size > 0, size % pageSize == 0, base % pageSize == 0, offset % pageSize == 0, base <= UInt64.max - size else {
                throw HandoffError(message: "mapping \(i): base \(hex(base)), size \(hex(size)) and offset \(hex(offset)) must be nonzero multiples of page size \(pageSize)")
            }
            return RegionMapping(base: base, size: size, regionOffset: offset, pageSize: Int(pageSize))
        }
    }

    /// The JSON for `mappings`, as Firecracker writes it.
    public static func encode(_ mappings: [RegionMapping]) -> [UInt8] {
        Array(("[" + mappings.map {
            "{\"base_host_virt_addr\":\($0.base),\"size\":\($0.size),\"offset\":\($0.regionOffset),\"page_size\":\($0.pageSize)}"
        }.joined(separator: ",") + "]").utf8)
    }
}

/// One mapping of a served region into the workload's address space: bytes
/// `[regionOffset, regionOffset + size)` of the region live at `[base, base + size)`.
/// The same fields as Firecracker's `GuestRegionUffdMapping`.
public struct RegionMapping: Equatable, Sendable {
    public var base: UInt64
    public var size: UInt64
    public var regionOffset: UInt64
    public var pageSize: Int

    public init(base: UInt64, size: UInt64, regionOffset: UInt64, pageSize: Int) {
        self.base = base
        self.size = size
        self.regionOffset = regionOffset
        self.pageSize = pageSize
    }

    public var range: AddressRange { AddressRange(start: base, length: size) }
}

/// An explicit prefetch hint from the workload ("prefetch this range before it is touched",
/// the semantics of openEuler GMEM's `hmadvise`/`gmemPrefetch`): one line of JSON on the
/// handoff connection, `{"prefetch":{"base_host_virt_addr":A,"size":S}}`. The pager fetches
/// the range at prefetch priority and answers `{"prefetched":{...same...}}` when all of it is
/// local.
public struct PrefetchHint: Equatable, Sendable {
    public var address: UInt64
    public var size: UInt64

    public init(address: UInt64, size: UInt64) {
        self.address = address
        self.size = size
    }

    init?(json: [UInt8]) {
        guard let value = try? JSONReader.parse(json), let body = value["prefetch"],
              let address = body["base_host_virt_addr"]?.uint64, let size = body["size"]?.uint64 else { return nil }
        self.init(address: address, size: size)
    }
}
