import PagerKernel

/// What the source's RDMA_KEY frames (spec §4.15) granted: per region, the remote address and
/// rkey of its registered memory and how many bytes may be read. Pure.
public struct RemoteKeys: Sendable {
    /// One RDMA_KEY frame.
    public struct Grant: Sendable, Equatable {
        public let region: UInt32
        public let rkey: UInt32
        public let address: UInt64
        public let length: UInt64

        public init(region: UInt32, rkey: UInt32, address: UInt64, length: UInt64) {
            self.region = region
            self.rkey = rkey
            self.address = address
            self.length = length
        }
    }

    /// Where a READ goes on the source.
    public struct Remote: Sendable, Equatable {
        public let address: UInt64
        public let rkey: UInt32

        public init(address: UInt64, rkey: UInt32) {
            self.address = address
            self.rkey = rkey
        }
    }

    private var grants: [UInt32: Grant] = [:]

    public init() {}

    /// Records a grant; a later grant for the same region replaces it (a re-registration after a
    /// reconnect). `regionLength` is the region's length from its REGION frame: a grant for an
    /// unknown region, of length 0, longer than the region, or whose end overflows is refused.
    public mutating func record(_ grant: Grant, regionLength: UInt64?) throws(RemoteKeyError) {
        guard let regionLength else { throw .unknownRegion(grant.region) }
        guard grant.length > 0, grant.length <= regionLength else {
            throw .badLength(region: grant.region, length: grant.length, regionLength: regionLength)
        }
        guard grant.address.addingReportingOverflow(grant.length).overflow == false else {
            throw .addressOverflow(region: grant.region, address: grant.address, length: grant.length)
        }
        grants[grant.region] = grant
    }

    /// Forgets every grant (the queue pairs are gone: their keys mean nothing any more).
    public mutating func removeAll() { grants.removeAll() }

    /// Where to READ `target`; nil when the region has no grant or the grant does not cover the
    /// target (those pages come over TCP).
    public func remote(for target: ReadTarget) -> Remote? {
        guard let grant = grants[target.region], target.length > 0 else { return nil }
        let (end, overflow) = target.offset.addingReportingOverflow(UInt64(target.length))
        guard !overflow, end <= grant.length else { return nil }
        return Remote(address: grant.address + target.offset, rkey: grant.rkey)
    }

    public var isEmpty: Bool { grants.isEmpty }
}

/// An RDMA_KEY frame that cannot be used.
public enum RemoteKeyError: Error, Sendable, Equatable, CustomStringConvertible {
    case unknownRegion(UInt32)
    case badLength(region: UInt32, length: UInt64, regionLength: UInt64)
    case addressOverflow(region: UInt32, address: UInt64, length: UInt64)

    public var description: String {
        switch self {
        case .unknownRegion(let r): "RDMA_KEY for region \(r), which the source never described"
        case .badLength(let r, let l, let rl): "RDMA_KEY for region \(r) grants \(l) bytes; the region has \(rl) (must be 1...\(rl))"
        case .addressOverflow(let r, let a, let l): "RDMA_KEY for region \(r): address \(hex(a)) + length \(l) overflows 64 bits"
        }
    }
}
