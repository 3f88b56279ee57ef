import Glibc
import Logging
import PagerDestination
import PagerKernel
import PagerTransport
import PagerWire
import Synchronization

/// What post-copy of a pre-copied region gave: the memory it filled, the pages that differ
/// from the source's final memory, and the resolver's error if it failed.
struct StagedResolve: ~Copyable {
    let destination: MemoryMapping
    let differing: [Int]
    let failure: String?

    /// Post-copy of `region`, staged by pre-copy, into fresh anonymous memory registered with
    /// a real userfaultfd: the resolver runs on its own thread while this one reads every
    /// page in a scattered order (each read faults) and compares it with `expected`.
    init(_ staged: StagedPages, region: RegionDescriptor, pages: Int, expected: borrowing MemoryMapping,
         demand: any FrameConnection, push: any FrameConnection, resumer: (any SessionResumer)? = nil, logger: Logger) throws {
        let memory = try MemoryMapping.anonymous(length: pages * basePageSize)
        let uffd = try Userfaultfd()
        try uffd.negotiate([.eventRemove, .eventUnmap])
        try uffd.register(memory.range, mode: .missing)
        var configuration = FaultResolver.Configuration()
        configuration.staged = staged
        configuration.resumer = resumer
        let mapping = RegionMapping(base: UInt64(UInt(bitPattern: memory.base)), size: UInt64(pages * basePageSize), regionOffset: 0, pageSize: basePageSize)
        let resolver = try FaultResolver(uffd: uffd, region: region, mappings: [mapping], demand: demand, push: push,
                                         configuration: configuration, logger: logger)
        let failed = Mutex<String?>(nil)
        let resolving = try KernelThread(name: "test-resolver") {
            do { _ = try resolver.run() } catch { failed.withLock { $0 = "\(error)" } }
        }
        var bad: [Int] = []
        for i in 0..<pages {
            let p = (i &* 2654435761) % pages
            if memcmp(memory.page(p), expected.page(p), basePageSize) != 0 { bad.append(p) }
        }
        resolving.join()
        differing = bad
        failure = failed.withLock { $0 }
        destination = memory
    }
}
