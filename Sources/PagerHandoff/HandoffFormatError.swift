/// Where in a handoff message a problem is.
public enum HandoffLocation: Equatable, Sendable, CustomStringConvertible {
    /// The mapping at this index of the array.
    case mapping(Int)
    /// A prefetch hint line (`{"prefetch":{...}}`).
    case hint

    public var description: String {
        switch self {
        case .mapping(let i): "mapping \(i)"
        case .hint: "prefetch hint"
        }
    }
}

/// Why a handoff message (the mappings, or a prefetch hint) was refused: one case per thing
/// that can be wrong, each naming the field, so the workload's operator reads what to fix.
public enum HandoffFormatError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The bytes are not one JSON document (or exceed ``JSONLimits/handoff``).
    case notJSON(JSONError)
    /// The workload sent `{"error":"..."}` instead of mappings (the preload library does when
    /// it cannot set up a userfaultfd): its own words.
    case workloadReported(String)
    /// The mappings message is JSON but not an array.
    case notAnArray(found: String)
    /// The array holds no mapping.
    case noMappings
    /// An array element (or the hint's body) is not an object.
    case notAnObject(HandoffLocation, found: String)
    /// A required field is absent.
    case missingField(HandoffLocation, field: String)
    /// A field is present but not an exact unsigned 64-bit integer.
    case notAnUnsignedInteger(HandoffLocation, field: String, text: String, problem: IntegerProblem)
    /// Neither `page_size` nor `page_size_kib`.
    case missingPageSize(mapping: Int)
    /// The page size is not 4 KiB, 2 MiB or 1 GiB.
    case unsupportedPageSize(mapping: Int, field: String, value: UInt64)
    /// `page_size` and `page_size_kib` both present and naming different sizes.
    case conflictingPageSizes(mapping: Int, pageSize: UInt64, pageSizeKiB: UInt64)
    /// `size` is zero.
    case zeroSize(HandoffLocation)
    /// A field is not a multiple of the mapping's page size.
    case misaligned(mapping: Int, field: String, value: UInt64, pageSize: UInt64)
    /// `start + size` (the end, exclusive) does not fit in 64 bits.
    case rangeOverflows(HandoffLocation, field: String, start: UInt64, size: UInt64)
    /// Two mappings share addresses: an address would have two meanings.
    case overlappingMappings(first: Int, second: Int)

    public var description: String {
        switch self {
        case .notJSON(let e): "handoff is not JSON: \(e)"
        case .workloadReported(let text): "the workload reported an error instead of handing over its memory: \(text)"
        case .notAnArray(let found): "handoff must be a JSON array of mappings, found \(found)"
        case .noMappings: "handoff must be a non-empty JSON array of mappings, found []"
        case .notAnObject(let at, let found): "\(at) must be a JSON object, found \(found)"
        case .missingField(let at, let field): "\(at) has no field \(field)"
        case .notAnUnsignedInteger(let at, let field, let text, let problem):
            "\(at): \(field) must be an unsigned 64-bit integer, \(text) \(problem)"
        case .missingPageSize(let i): "mapping \(i) needs page_size (bytes) or page_size_kib"
        case .unsupportedPageSize(let i, let field, let value): "mapping \(i): \(field) \(value) is not 4 KiB, 2 MiB or 1 GiB"
        case .conflictingPageSizes(let i, let bytes, let kib):
            "mapping \(i): page_size \(bytes) and page_size_kib \(kib) name different page sizes"
        case .zeroSize(let at): "\(at): size is 0"
        case .misaligned(let i, let field, let value, let pageSize):
            "mapping \(i): \(field) \(hex(value)) is not a multiple of the page size \(pageSize)"
        case .rangeOverflows(let at, let field, let start, let size):
            "\(at): \(field) \(hex(start)) + size \(hex(size)) does not fit in 64 bits"
        case .overlappingMappings(let a, let b): "mappings \(a) and \(b) overlap (an address can be in only one mapping)"
        }
    }
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
