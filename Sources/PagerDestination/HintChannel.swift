import Logging
import PagerCore
import PagerKernel
import SystemPackage

/// The workload's side of the handoff connection, read by the fault loop only: explicit
/// prefetch hints come in as lines of JSON (``PrefetchHint``), and each is answered with a
/// `prefetched` line once all of its range is local. EOF means the workload is gone.
final class HintChannel {
    let connection: FileDescriptor
    private var buffer: [UInt8] = []
    /// Hinted ranges not yet wholly local.
    private var pending: [Pending] = []
    private let logger: Logger

    private struct Pending {
        var hint: PrefetchHint
        var ranges: [Range<Int>]
        var requested = false
    }

    /// No line that long is a hint: the buffer is dropped rather than grown.
    static let maxLine = 1 << 16

    init(_ connection: FileDescriptor, logger: Logger) {
        self.connection = connection
        self.logger = logger
    }

    /// Reads what has arrived and parses complete lines into hints for pages of `mappings`.
    /// Returns false at EOF (the workload closed the connection: it is gone).
    func read(_ mappings: MappingTable) throws(KernelError) -> Bool {
        guard let bytes = try UnixSocket.readAvailable(connection, maxBytes: 4096) else { return true }
        if bytes.isEmpty { return false }
        buffer += bytes
        while let newline = buffer.firstIndex(of: 0x0A) {
            let line = Array(buffer[..<newline])
            buffer.removeSubrange(...newline)
            guard !line.isEmpty else { continue }
            guard let hint = PrefetchHint(json: line) else {
                logger.warning("ignoring a malformed message on the handoff connection: \(String(decoding: line.prefix(200), as: UTF8.self))")
                continue
            }
            let end = hint.address &+ hint.size
            guard hint.size > 0, end > hint.address else { continue }
            let u = UInt64(mappings.unit)
            let ranges = mappings.pages(inAddresses: hint.address / u * u, (end + u - 1) / u * u)
            logger.info("prefetch hint for \(hex(hint.address))+\(hex(hint.size)) (\(ranges.reduce(0) { $0 + $1.count }) pages)")
            pending.append(Pending(hint: hint, ranges: ranges))
        }
        if buffer.count > HintChannel.maxLine { buffer.removeAll() }
        return true
    }

    /// The ranges of hints not requested yet (each is requested once).
    func takeUnrequested() -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        for i in pending.indices where !pending[i].requested {
            pending[i].requested = true
            ranges += pending[i].ranges
        }
        return ranges
    }

    /// Removes and returns the hints whose ranges are all local now.
    func takeCompleted(_ pages: RegionPages) -> [PrefetchHint] {
        guard !pending.isEmpty else { return [] }
        let local = { (p: Pending) in
            p.ranges.allSatisfy { r in r.allSatisfy { [.resident, .discarded].contains(pages.state(of: $0)) } }
        }
        let done = pending.filter(local).map(\.hint)
        pending.removeAll(where: local)
        return done
    }

    /// Tells the workload that these hints' ranges are local.
    func answer(_ hints: [PrefetchHint]) {
        for hint in hints { try? UnixSocket.send(connection, bytes: hint.prefetchedLine, descriptors: []) }
    }
}

extension PrefetchHint {
    /// The answer line: `{"prefetched":{"base_host_virt_addr":A,"size":S}}` and a newline.
    var prefetchedLine: [UInt8] {
        Array("{\"prefetched\":{\"base_host_virt_addr\":\(address),\"size\":\(size)}}\n".utf8)
    }
}
