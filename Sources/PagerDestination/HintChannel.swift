import Logging
import PagerHandoff
import PagerCore
import PagerKernel
import SystemPackage

/// The workload's side of the handoff connection, read by the fault loop only: explicit
/// prefetch hints come in as lines of JSON (``PrefetchHint``), and each is answered with a
/// `prefetched` line once all of its range is local. EOF means the workload is gone.
final class HintChannel {
    let connection: FileDescriptor
    private var lines = LineSplitter()
    /// Hinted ranges not yet wholly local.
    private var pending: [Pending] = []
    private let logger: Logger

    private struct Pending {
        var hint: PrefetchHint
        var ranges: [Range<Int>]
        var requested = false
    }

    init(_ connection: FileDescriptor, logger: Logger) {
        self.connection = connection
        self.logger = logger
    }

    /// Reads what has arrived and parses complete lines into hints for pages of `mappings`.
    /// Returns false at EOF (the workload closed the connection: it is gone).
    func read(_ mappings: MappingTable) throws(KernelError) -> Bool {
        guard let bytes = try UnixSocket.readAvailable(connection, maxBytes: 4096) else { return true }
        if bytes.isEmpty { return false }
        lines.append(bytes)
        while let line = lines.next() {
            guard case .text(let text) = line else {
                logger.warning("ignoring a line longer than \(lines.maxLine) bytes on the handoff connection")
                continue
            }
            let hint: PrefetchHint
            do { hint = try PrefetchHint.decode(text) } catch {
                logger.warning("ignoring a malformed message on the handoff connection (\(error)): \(String(decoding: text.prefix(200), as: UTF8.self))")
                continue
            }
            let u = UInt64(mappings.unit)
            // decode refuses size 0 and ranges past 2^64; the end rounds out to a whole unit,
            // saturating at the top of the address space.
            let lastUnit = (hint.address + (hint.size - 1)) / u * u
            let ranges = mappings.pages(inAddresses: hint.address / u * u, lastUnit > UInt64.max - u ? UInt64.max : lastUnit + u)
            logger.info("prefetch hint for \(hex(hint.address))+\(hex(hint.size)) (\(ranges.reduce(0) { $0 + $1.count }) pages)")
            pending.append(Pending(hint: hint, ranges: ranges))
        }
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
        for hint in hints { try? UnixSocket.send(connection, bytes: hint.encodedReply(), descriptors: []) }
    }
}

