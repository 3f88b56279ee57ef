import PagerKernel
import PagerTransport
import PagerWire

/// One-sided reads served beside the connections (RDMA READ, spec §4.15): queue pairs
/// admitted for authenticated sessions only, the regions' memory registered for remote read,
/// RDMA_KEY frames sent on the session's demand connection. Implemented by the RDMA transport
/// (PagerRDMATransport, `RDMA` trait); the server knows only this.
public protocol ReadService: AnyObject, Sendable {
    /// A new session authenticated and was welcomed with `rdma`: its queue pairs may connect
    /// under `admissionKey` (the demand connection's, spec §5); the keys for `regions` (those
    /// in this process's memory and not live) go on the session's demand connection as it is
    /// then (`demand`: a resume replaces it; nil once the session is closed) each time a queue
    /// pair is admitted, but not while `held` (the server's gate: nothing of a VM's RAM before
    /// it stopped): those wait until it is released.
    func open(session: UInt64, admissionKey: [UInt8], regions: [ServedRegion], demand: @escaping @Sendable () -> (any FrameConnection)?,
              held: @escaping @Sendable () -> Bool)
    /// The session ended: its queue pairs, registrations and admission go.
    func close(session: UInt64)
    /// The RDMA_KEY frame for `region` once the session's push queue pair is admitted (the
    /// push then leaves the region's data to READs, PUSH_READ §4.11a, and sends this ahead of
    /// them); nil before, after the queue pair went, or for a region not registered.
    func pushKey(session: UInt64, region: UInt32) -> Message?
}

extension ServedRegion {
    /// The region's bytes in this process (a mapped file, or memory handed in), nil for another
    /// process's memory (read with `process_vm_readv`, which no device can READ).
    public var localMemory: UnsafeRawBufferPointer? { base.map { UnsafeRawBufferPointer(start: $0, count: Int(length)) } }
}

/// A second mapping of a served file, readable and writable (``ServedRegion/writableFileMapping()``).
public final class WritableFileMapping: @unchecked Sendable {
    private let file: MemoryFile
    private let mapping: MemoryMapping
    public var base: UnsafeMutableRawPointer { mapping.base }
    public var length: Int { mapping.length }

    init(file: MemoryFile, mapping: consuming MemoryMapping) {
        self.file = file
        self.mapping = mapping
    }
}

extension ServedRegion {
    /// The region's file mapped again shared and writable; nil when the region is not a file.
    /// For RDMA registration on kernels before 6.2, which pin memory for a device only through
    /// a writable mapping (`FOLL_FORCE` on a shared read-only one fails with EFAULT). Nothing
    /// writes through it: the registration allows remote reads only.
    public func writableFileMapping() throws(KernelError) -> WritableFileMapping? {
        guard let owner else { return nil }
        let file = try MemoryFile(path: name, writable: true)
        // The path may name another file by now (renamed, replaced): READ must serve the
        // bytes TCP serves.
        guard file.isSameFile(as: owner.file) else {
            throw KernelError("open", .noSuchFileOrDirectory, detail: "\(name) is no longer the file this region serves")
        }
        let mapping = try MemoryMapping.map(file, length: Int(length), shared: true, writable: true)
        return WritableFileMapping(file: file, mapping: mapping)
    }
}
