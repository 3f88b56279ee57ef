// The handoff's formats (RegionMapping, PrefetchHint, the JSON reader) live in the pure
// PagerHandoff module; re-exported so code that imports PagerDestination (FaultResolver,
// pagerd, the tests) keeps seeing them here.
@_exported import PagerHandoff
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
    /// The connection closed before sending anything (a probe, e.g. a second daemon checking
    /// whether the socket is live): not a workload that tried and failed.
    public var silent = false
    public var description: String { message }
    public init(message: String, silent: Bool = false) {
        self.message = message
        self.silent = silent
    }
}

/// Accepts handoffs on a Unix socket in Firecracker's format: one message whose bytes are a
/// JSON array of `{"base_host_virt_addr", "size", "offset", "page_size"}` objects (also
/// `page_size_kib`, as older Firecracker releases send), with the userfaultfd attached as
/// `SCM_RIGHTS`. `offset` is the offset into the served region.
///
/// The socket is made with mode 0660: whoever can connect hands over memory that the source's
/// pages are then written into, so only the owner (root) and the socket's group may. With
/// `group` (`--socket-group`, e.g. kvm for QEMU run by libvirt as libvirt-qemu) that group.
public final class HandoffListener: @unchecked Sendable {
    public let path: String
    private let listener: FileDescriptor

    public init(path: String, group: String? = nil) throws(KernelError) {
        self.path = path
        listener = try UnixSocket.listen(path: path, group: group)
    }

    deinit { try? listener.close() }

    /// Waits for one connection and reads its handoff. A connection that closes before
    /// sending anything (a probe of the socket) is not a handoff: waits for the next.
    public func accept() throws -> Handoff {
        while true {
            let connection = try UnixSocket.accept(listener)
            do {
                return try HandoffListener.read(from: connection)
            } catch let e as HandoffError where e.silent {
                try? connection.close()
            } catch {
                try? connection.close()
                throw error
            }
        }
    }

    /// Stops accepting: wakes a thread blocked in ``accept()``.
    public func close() {
        _ = shutdownSocket(listener)
    }

    /// The most a handoff message may hold (the decoder's own limit, ``JSONLimits/handoff``).
    static let maxMessage = JSONLimits.handoff.maxBytes

    /// Reads one handoff message from `connection`: the mappings (decoded by
    /// ``RegionMapping/decodeArray(_:)``) and exactly one userfaultfd.
    public static func read(from connection: FileDescriptor) throws -> Handoff {
        var first = try UnixSocket.receive(connection, maxBytes: 64 << 10, maxDescriptors: 4)
        guard !first.bytes.isEmpty || !first.descriptors.isEmpty else {
            throw HandoffError(message: "handoff connection closed before any message", silent: true)
        }
        var bytes = first.bytes
        // The JSON may be split across reads of the stream: read until it parses.
        while (try? JSONReader.parse(bytes)) == nil && bytes.count < maxMessage {
            let more = try UnixSocket.receive(connection, maxBytes: 64 << 10, maxDescriptors: 4)
            first.descriptors += more.descriptors
            if more.bytes.isEmpty { break }
            bytes += more.bytes
        }
        let fds = first.descriptors
        // Decoded before the descriptors are counted: a workload that could not make a
        // userfaultfd sends `{"error":"..."}` with none, and its words say more than "got 0".
        let mappings: [RegionMapping]
        do {
            mappings = try RegionMapping.decodeArray(bytes)
        } catch {
            throw refuse(fds, from: connection, because: error)
        }
        guard fds.count == 1 else {
            throw refuse(fds, from: connection, because: HandoffError(message: "handoff must carry exactly one userfaultfd (SCM_RIGHTS), got \(fds.count)"))
        }
        return Handoff(uffd: try Userfaultfd(adopting: fds[0]), mappings: mappings, connection: connection)
    }

    /// Refuses a handoff. The descriptors that came with it may be userfaultfds on memory the
    /// workload already waits on: closing them would turn its missing pages into zeros. So
    /// before they are closed, whatever of the sender's memory they cover is poisoned (the
    /// workload gets SIGBUS there), found from its smaps since the message did not say.
    /// Returns `reason` itself when nothing was poisoned, else the reason with what was.
    static func refuse(_ descriptors: [FileDescriptor], from connection: FileDescriptor, because reason: any Error) -> any Error {
        var poisoned = 0
        var stopped: Int32?
        let pid = try? UnixSocket.peerProcess(connection)
        for fd in descriptors {
            guard let pid, let uffd = try? Userfaultfd(adopting: fd) else {
                try? fd.close()
                continue
            }
            if !PoisonGuard.kernelCanPoison {
                // Nothing can be poisoned on this kernel: the workload must not outlive the
                // descriptor that holds its missing pages.
                // smaps unreadable: the descriptor is taken to cover the sender's memory.
                let registered = (try? Userfaultfd.missingRegisteredMappings(smaps: readWholeFile("/proc/\(pid)/smaps")))
                if registered?.isEmpty == true { continue }
                if let failure = PoisonGuard.stopOwner(pid) {
                    PoisonGuard.holdOpen(uffd)
                    return HandoffError(message: "\(reason); this kernel cannot poison pages (no UFFDIO_POISON) and the workload (pid \(pid)) could not be killed (\(failure)): its userfaultfd is held open, so its faults wait instead of reading zeros")
                }
                stopped = pid
                continue
            }
            poisoned += (try? uffd.poisonRegisteredMappings(ofProcess: pid)) ?? 0
        }
        if let stopped {
            return HandoffError(message: "\(reason); this kernel cannot poison pages (no UFFDIO_POISON), so the workload (pid \(stopped)), whose memory its userfaultfd covered, was killed (never zeros)")
        }
        guard poisoned > 0 else { return reason }
        return HandoffError(message: "\(reason); \(poisoned) missing pages its userfaultfd covered were poisoned (the workload gets SIGBUS there, never zeros)")
    }

    /// Parses the JSON array of mappings (``RegionMapping/decodeArray(_:)``).
    public static func parseMappings(_ bytes: [UInt8]) throws(HandoffFormatError) -> [RegionMapping] {
        try RegionMapping.decodeArray(bytes)
    }

    /// The JSON for `mappings`, as Firecracker writes it (``RegionMapping/encodeArray(_:)``).
    public static func encode(_ mappings: [RegionMapping]) -> [UInt8] {
        RegionMapping.encodeArray(mappings)
    }
}

extension RegionMapping {
    /// The mapping's addresses in the workload, `[base, base + size)`.
    public var range: AddressRange { AddressRange(start: base, length: size) }
}
