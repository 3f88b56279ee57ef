/// An explicit prefetch hint from the workload ("prefetch this range before it is touched",
/// the semantics of openEuler GMEM's `hmadvise`/`gmemPrefetch`): one line of JSON on the
/// handoff connection, `{"prefetch":{"base_host_virt_addr":A,"size":S}}`. The pager fetches
/// the range at prefetch priority and answers `{"prefetched":{...same...}}` when all of it is
/// local. The range need not be page-aligned (the pager rounds it out to whole pages).
public struct PrefetchHint: Equatable, Sendable {
    public var address: UInt64
    public var size: UInt64

    public init(address: UInt64, size: UInt64) {
        self.address = address
        self.size = size
    }

    /// Decodes one hint line (without its newline): an object whose `prefetch` member holds
    /// exact unsigned integers `base_host_virt_addr` and `size`, size nonzero, the range not
    /// passing 2^64. Other members are ignored.
    public static func decode(_ line: [UInt8]) throws(HandoffFormatError) -> PrefetchHint {
        try decodeBody(line, key: "prefetch")
    }

    /// Decodes the pager's reply line, `{"prefetched":{...}}` (for workloads and tests).
    public static func decodeReply(_ line: [UInt8]) throws(HandoffFormatError) -> PrefetchHint {
        try decodeBody(line, key: "prefetched")
    }

    /// The hint's line, newline included: `{"prefetch":{"base_host_virt_addr":A,"size":S}}\n`.
    public func encoded() -> [UInt8] { line(key: "prefetch") }

    /// The pager's answer once the whole range is local, newline included:
    /// `{"prefetched":{"base_host_virt_addr":A,"size":S}}\n`.
    public func encodedReply() -> [UInt8] { line(key: "prefetched") }

    private func line(key: String) -> [UInt8] {
        var out = JSONWriter.encode(.object([(key, .object([
            ("base_host_virt_addr", .unsigned(address)),
            ("size", .unsigned(size)),
        ]))]))
        out.append(0x0A)
        return out
    }

    private static func decodeBody(_ line: [UInt8], key: String) throws(HandoffFormatError) -> PrefetchHint {
        let value: JSONValue
        do { value = try JSONReader.parse(line, limits: .handoff) } catch { throw .notJSON(error) }
        guard case .object = value else { throw .notAnObject(.hint, found: value.kind) }
        guard let body = value[key] else { throw .missingField(.hint, field: key) }
        guard case .object = body else { throw .notAnObject(.hint, found: body.kind) }
        let address = try unsignedField(body, "base_host_virt_addr", at: .hint)
        let size = try unsignedField(body, "size", at: .hint)
        guard size > 0 else { throw .zeroSize(.hint) }
        guard address <= UInt64.max - size else { throw .rangeOverflows(.hint, field: "base_host_virt_addr", start: address, size: size) }
        return PrefetchHint(address: address, size: size)
    }
}
