import PagerHandoff
import Testing

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

func decode(_ s: String) throws(HandoffFormatError) -> [RegionMapping] { try RegionMapping.decodeArray(bytes(s)) }

func refusal(_ s: String) -> HandoffFormatError? {
    do { _ = try decode(s); return nil } catch { return error }
}

@Suite("Mappings: accepted")
struct MappingsAccepted {
    @Test("Firecracker's message today: page_size and page_size_kib, both in bytes, pretty-printed")
    func firecracker() throws {
        let m = try decode("""
        [
          {
            "base_host_virt_addr": 140000000000000,
            "size": 1073741824,
            "offset": 0,
            "page_size": 4096,
            "page_size_kib": 4096
          }
        ]
        """)
        #expect(m == [RegionMapping(base: 140_000_000_000_000, size: 1 << 30, regionOffset: 0, pageSize: 4096)])
    }

    @Test("older Firecracker: page_size_kib in KiB, no page_size")
    func kib() throws {
        #expect(try decode(#"[{"base_host_virt_addr":4194304,"size":4194304,"offset":2097152,"page_size_kib":2048}]"#)
            == [RegionMapping(base: 4 << 20, size: 4 << 20, regionOffset: 2 << 20, pageSize: 2 << 20)])
        #expect(try decode(#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4}]"#)[0].pageSize == 4096)
        #expect(try decode(#"[{"base_host_virt_addr":1073741824,"size":1073741824,"offset":0,"page_size_kib":1048576}]"#)[0].pageSize == 1 << 30)
        // Bytes in page_size_kib without page_size (as Firecracker fills that field): read as
        // 4096 KiB before, and refused as "not 4 KiB, 2 MiB or 1 GiB".
        #expect(try decode(#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4096}]"#)[0].pageSize == 4096)
        #expect(try decode(#"[{"base_host_virt_addr":2097152,"size":2097152,"offset":0,"page_size_kib":2097152}]"#)[0].pageSize == 2 << 20)
    }

    @Test("the preload library's message, exactly as its snprintf writes it")
    func preload() throws {
        #expect(try decode(#"[{"base_host_virt_addr":139637976727552,"size":536870912,"offset":0,"page_size":4096}]"#)
            == [RegionMapping(base: 139_637_976_727_552, size: 512 << 20, regionOffset: 0, pageSize: 4096)])
    }

    @Test("several mappings, any key order, unknown keys, every kind of whitespace")
    func several() throws {
        let m = try decode(" \t\r\n[{\"page_size\":4096,\"offset\":8192,\"size\":4096,\"guest_phys_addr\":0,\"base_host_virt_addr\":65536},\n"
            + "{\"size\" : 2097152 , \"base_host_virt_addr\" : 2097152, \"page_size\":2097152, \"offset\":0, \"x\":[1,{\"y\":null}]}]\r\n")
        #expect(m == [RegionMapping(base: 65536, size: 4096, regionOffset: 8192, pageSize: 4096),
                      RegionMapping(base: 2 << 20, size: 2 << 20, regionOffset: 0, pageSize: 2 << 20)])
    }

    @Test("addresses above 2^53 survive exactly (no Double on the way)")
    func exact() throws {
        let base: UInt64 = 0xFFFF_FFFF_FFFF_E000 - 4096
        let m = try decode("[{\"base_host_virt_addr\":\(base),\"size\":4096,\"offset\":18446744073709543424,\"page_size\":4096}]")
        #expect(m[0].base == base && m[0].regionOffset == UInt64.max - 8191)
    }

    @Test("adjacent mappings and aliases of the same region bytes are not overlaps")
    func adjacent() throws {
        #expect(try decode(#"[{"base_host_virt_addr":8192,"size":4096,"offset":0,"page_size":4096},{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]"#).count == 2)
    }

    @Test("encode then decode is the identity; the encoding is the preload's format")
    func roundTrip() throws {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let sizes: [UInt64] = [4096, 2 << 20, 1 << 30]
            var next: UInt64 = 1 << 30
            let mappings = (0..<Int.random(in: 1...6, using: &rng)).map { _ in
                let p = sizes.randomElement(using: &rng)!
                let base = (next + p - 1) / p * p, size = p * UInt64.random(in: 1...4, using: &rng)
                next = base + size + p * UInt64.random(in: 0...2, using: &rng)
                return RegionMapping(base: base, size: size, regionOffset: p * UInt64.random(in: 0...1000, using: &rng), pageSize: Int(p))
            }
            #expect(try RegionMapping.decodeArray(RegionMapping.encodeArray(mappings)) == mappings)
        }
        #expect(RegionMapping.encodeArray([RegionMapping(base: 4096, size: 8192, regionOffset: 0, pageSize: 4096)])
            == bytes(#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096}]"#))
    }
}

@Suite("Mappings: refused, each with its own reason")
struct MappingsRefused {
    let ok = #""base_host_virt_addr":4096,"size":4096,"offset":0"#

    @Test("not JSON, not an array, empty, elements not objects")
    func shape() {
        guard case .notJSON? = refusal("[{") else { Issue.record("truncated JSON accepted"); return }
        #expect(refusal("") == .notJSON(JSONError(.unexpectedEnd, offset: 0)))
        #expect(refusal(#"{"base_host_virt_addr":4096}"#) == .notAnArray(found: "an object"))
        #expect(refusal("[]") == .noMappings)
        #expect(refusal("[4096]") == .notAnObject(.mapping(0), found: "a number"))
    }

    @Test("the preload library's {\"error\": ...} is passed on in its own words")
    func workloadError() {
        let e = refusal(#"{"error":"userfaultfd: Operation not permitted"}"#)
        #expect(e == .workloadReported("userfaultfd: Operation not permitted"))
        #expect(e?.description.contains("userfaultfd: Operation not permitted") == true)
    }

    @Test("missing, negative, fractional, overflowing, non-number fields")
    func fields() {
        #expect(refusal(#"[{"size":4096,"offset":0,"page_size":4096}]"#) == .missingField(.mapping(0), field: "base_host_virt_addr"))
        #expect(refusal(#"[{"base_host_virt_addr":4096,"offset":0,"page_size":4096}]"#) == .missingField(.mapping(0), field: "size"))
        #expect(refusal("[{\(ok),\"page_size\":4096}, {\"base_host_virt_addr\":8192,\"size\":4096,\"page_size\":4096}]") == .missingField(.mapping(1), field: "offset"))
        #expect(refusal(#"[{"base_host_virt_addr":-4096,"size":4096,"offset":0,"page_size":4096}]"#)
            == .notAnUnsignedInteger(.mapping(0), field: "base_host_virt_addr", text: "-4096", problem: .negative))
        #expect(refusal(#"[{"base_host_virt_addr":4096,"size":-0,"offset":0,"page_size":4096}]"#)
            == .notAnUnsignedInteger(.mapping(0), field: "size", text: "-0", problem: .negative))
        #expect(refusal(#"[{"base_host_virt_addr":4096,"size":4096.0,"offset":0,"page_size":4096}]"#)
            == .notAnUnsignedInteger(.mapping(0), field: "size", text: "4096.0", problem: .fractional))
        #expect(refusal(#"[{"base_host_virt_addr":4096,"size":4096,"offset":4.096e3,"page_size":4096}]"#)
            == .notAnUnsignedInteger(.mapping(0), field: "offset", text: "4.096e3", problem: .fractional))
        #expect(refusal(#"[{"base_host_virt_addr":18446744073709551616,"size":4096,"offset":0,"page_size":4096}]"#)
            == .notAnUnsignedInteger(.mapping(0), field: "base_host_virt_addr", text: "18446744073709551616", problem: .overflow))
        #expect(refusal(#"[{"base_host_virt_addr":"4096","size":4096,"offset":0,"page_size":4096}]"#)
            == .notAnUnsignedInteger(.mapping(0), field: "base_host_virt_addr", text: "a string", problem: .notANumber))
        // Not JSON numbers at all: the reader refuses them before the mapping is looked at.
        for bad in ["+4096", "04096", "0x1000", "4096.", ".5", "1e", "Infinity", "NaN"] {
            guard case .notJSON? = refusal("[{\"base_host_virt_addr\":\(bad),\"size\":4096,\"offset\":0,\"page_size\":4096}]") else {
                Issue.record("\(bad) accepted as a number"); continue
            }
        }
    }

    @Test("page sizes: missing, unsupported, conflicting, and a page_size_kib that would overflow when multiplied")
    func pageSizes() {
        #expect(refusal("[{\(ok)}]") == .missingPageSize(mapping: 0))
        #expect(refusal("[{\(ok),\"page_size\":8192}]") == .unsupportedPageSize(mapping: 0, field: "page_size", value: 8192))
        #expect(refusal("[{\(ok),\"page_size\":0}]") == .unsupportedPageSize(mapping: 0, field: "page_size", value: 0))
        #expect(refusal("[{\(ok),\"page_size_kib\":8}]") == .unsupportedPageSize(mapping: 0, field: "page_size_kib", value: 8))
        #expect(refusal("[{\(ok),\"page_size\":4096,\"page_size_kib\":2048}]") == .conflictingPageSizes(mapping: 0, pageSize: 4096, pageSizeKiB: 2048))
        // 2^54 KiB is 2^64 bytes: multiplying first trapped (the whole pager crashed) before.
        #expect(refusal("[{\(ok),\"page_size_kib\":18014398509481984}]") == .unsupportedPageSize(mapping: 0, field: "page_size_kib", value: 1 << 54))
        #expect(refusal("[{\(ok),\"page_size_kib\":18446744073709551615}]") == .unsupportedPageSize(mapping: 0, field: "page_size_kib", value: .max))
    }

    @Test("zero size, misalignment, base + size and offset + size past 2^64, overlap")
    func ranges() {
        #expect(refusal(#"[{"base_host_virt_addr":4096,"size":0,"offset":0,"page_size":4096}]"#) == .zeroSize(.mapping(0)))
        #expect(refusal(#"[{"base_host_virt_addr":4097,"size":4096,"offset":0,"page_size":4096}]"#)
            == .misaligned(mapping: 0, field: "base_host_virt_addr", value: 4097, pageSize: 4096))
        #expect(refusal(#"[{"base_host_virt_addr":2097152,"size":4096,"offset":0,"page_size":2097152}]"#)
            == .misaligned(mapping: 0, field: "size", value: 4096, pageSize: 2 << 20))
        #expect(refusal(#"[{"base_host_virt_addr":0,"size":4096,"offset":2048,"page_size":4096}]"#)
            == .misaligned(mapping: 0, field: "offset", value: 2048, pageSize: 4096))
        #expect(refusal(#"[{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0,"page_size":4096}]"#)
            == .rangeOverflows(.mapping(0), field: "base_host_virt_addr", start: UInt64.max - 4095, size: 8192))
        // offset + size past 2^64 was accepted before (only base + size was checked).
        #expect(refusal(#"[{"base_host_virt_addr":0,"size":8192,"offset":18446744073709547520,"page_size":4096}]"#)
            == .rangeOverflows(.mapping(0), field: "offset", start: UInt64.max - 4095, size: 8192))
        // Overlapping address ranges were accepted before; the resolver would pick one by order.
        #expect(refusal(#"[{"base_host_virt_addr":0,"size":16384,"offset":0,"page_size":4096},{"base_host_virt_addr":8192,"size":4096,"offset":65536,"page_size":4096}]"#)
            == .overlappingMappings(first: 0, second: 1))
        #expect(refusal(#"[{"base_host_virt_addr":8192,"size":4096,"offset":0,"page_size":4096},{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096},{"base_host_virt_addr":8192,"size":4096,"offset":4096,"page_size":4096}]"#)
            == .overlappingMappings(first: 0, second: 2))
    }

    @Test("duplicate fields, deep nesting and huge input are refused by the reader")
    func limits() {
        let twice = "[{\(ok),\"size\":8192,\"page_size\":4096}]"
        let second = twice.utf8.count - #""size":8192,"page_size":4096}]"#.utf8.count
        #expect(refusal(twice) == .notJSON(JSONError(.duplicateKey("size"), offset: second)))
        let deep = String(repeating: "[", count: 40) + String(repeating: "]", count: 40)
        guard case .notJSON(let e)? = refusal(deep), case .tooDeep = e.reason else { Issue.record("deep nesting accepted"); return }
        let one = "{\(ok),\"page_size\":4096},"
        let huge = "[" + String(repeating: one, count: (1 << 20) / one.utf8.count + 1) + "]"
        guard case .notJSON(let h)? = refusal(huge), case .tooLarge = h.reason else { Issue.record("a message over 1 MiB accepted"); return }
    }

    @Test("every refusal says what and where")
    func messages() {
        #expect(refusal("[{\(ok),\"page_size\":8192}]")?.description == "mapping 0: page_size 8192 is not 4 KiB, 2 MiB or 1 GiB")
        #expect(refusal(#"[{"base_host_virt_addr":-1,"size":4096,"offset":0,"page_size":4096}]"#)?.description
            == "mapping 0: base_host_virt_addr must be an unsigned 64-bit integer, -1 is negative")
        #expect(refusal("[1")?.description == "handoff is not JSON: invalid JSON at byte 2: unexpected end")
    }
}
