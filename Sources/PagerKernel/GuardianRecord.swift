/// One message from a destination daemon to its guardian (see ``Guardian``): a fixed
/// 40-byte little-endian record, one per `SOCK_SEQPACKET` message. Local to one host and one
/// executable (the daemon starts its guardian from its own binary), so not part of the wire
/// protocol; still decoded strictly, since a record is outside input to the guardian.
///
///     offset 0  u32  operation (1: guard a range, 2: release a guard)
///            4  u32  guard id (chosen by the daemon)
///            8  u64  range start (guard only; 0 for release)
///           16  u64  range length
///           24  u64  page size (a power of two, 4 KiB to 1 GiB)
///           32  u32  the memory's owner, a pid (0: unknown): killed where the kernel cannot poison
///           36  u32  reserved, 0
///
/// The first `guard` record of an id carries the workload's userfaultfd (`SCM_RIGHTS`).
public struct GuardianRecord: Equatable, Sendable {
    public enum Operation: UInt32, Sendable {
        /// Poison the missing pages of this range if the daemon dies.
        case guardRange = 1
        /// Every page of the guard is local, already poisoned, or the memory is gone: close
        /// the userfaultfd copy.
        case release = 2
    }

    public static let size = 40

    public var operation: Operation
    public var guardID: UInt32
    public var range: AddressRange
    public var pageSize: UInt64
    public var owner: UInt32

    public init(operation: Operation, guardID: UInt32, range: AddressRange = AddressRange(start: 0, length: 0), pageSize: UInt64 = 0,
                owner: UInt32 = 0) {
        self.operation = operation
        self.guardID = guardID
        self.range = range
        self.pageSize = pageSize
        self.owner = owner
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.size)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        put(operation.rawValue)
        put(guardID)
        put(range.start)
        put(range.length)
        put(pageSize)
        put(owner)
        put(UInt32(0))
        return out
    }

    /// Nil unless `bytes` is exactly one well-formed record: a known operation; for a guard, a
    /// power-of-two page size of 4 KiB to 1 GiB and a non-empty range aligned to it that
    /// does not wrap.
    public init?(bytes: [UInt8]) {
        guard bytes.count == Self.size else { return nil }
        func get<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T {
            var v = T.zero
            for i in (0..<MemoryLayout<T>.size).reversed() { v = v << 8 | T(bytes[at + i]) }
            return v
        }
        guard let operation = Operation(rawValue: get(0, UInt32.self)) else { return nil }
        let start = get(8, UInt64.self), length = get(16, UInt64.self), pageSize = get(24, UInt64.self)
        guard get(36, UInt32.self) == 0 else { return nil }
        if operation == .guardRange {
            guard pageSize >= 4096, pageSize <= 1 << 30, pageSize & (pageSize - 1) == 0,
                  length > 0, start % pageSize == 0, length % pageSize == 0,
                  start <= UInt64.max - length else { return nil }
        }
        self.init(operation: operation, guardID: get(4, UInt32.self), range: AddressRange(start: start, length: length), pageSize: pageSize,
                  owner: get(32, UInt32.self))
    }
}
