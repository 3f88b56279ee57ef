import PagerHandoff
import Testing

func parse(_ s: String) throws(JSONError) -> JSONValue { try JSONReader.parse(Array(s.utf8)) }

func reason(_ s: String) -> JSONError.Reason? {
    do { _ = try parse(s); return nil } catch { return error.reason }
}

@Suite("JSON reader and writer")
struct JSONTests {
    @Test("values of every kind, with their text kept")
    func values() throws {
        #expect(try parse(#" {"a":[1,-2.5e-3,true,false,null,"x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"],"b":{}} "#)
            == .object([("a", .array([.number("1"), .number("-2.5e-3"), .bool(true), .bool(false), .null, .string("x\"\\/\u{8}\u{c}\n\r\té😀")])),
                        ("b", .object([]))]))
        #expect(try parse("18446744073709551615").uint64 == .max)
        #expect(try parse("0").uint64 == 0)
    }

    @Test("what RFC 8259 refuses is refused")
    func strict() {
        #expect(reason("+1") == .unexpectedByte(UInt8(ascii: "+"), expected: "a value"))
        #expect(reason("01") == .trailingBytes)
        #expect(reason("1.") == .badNumber)
        #expect(reason("-") == .badNumber)
        #expect(reason("1e+") == .badNumber)
        #expect(reason("[1,]") == .unexpectedByte(UInt8(ascii: "]"), expected: "a value"))
        #expect(reason(#"{"a":1,}"#) == .unexpectedByte(UInt8(ascii: "}"), expected: "a string key"))
        #expect(reason("'a'") == .unexpectedByte(UInt8(ascii: "'"), expected: "a value"))
        #expect(reason("\"a\u{1}\"") == .controlCharacterInString)
        #expect(reason(#""\x""#) == .badEscape)
        #expect(reason(#""\u+fff""#) == .badEscape)
        #expect(reason(#""\ud83d""#) == .loneSurrogate)
        #expect(reason(#""\ude00""#) == .loneSurrogate)
        #expect(reason("tru") == .unexpectedByte(UInt8(ascii: "t"), expected: "true"))
        #expect(reason("1 2") == .trailingBytes)
        #expect(reason(#"{"a":1,"a":2}"#) == .duplicateKey("a"))
        #expect(reason(String(repeating: "1", count: 65)) == .numberTooLong)
        #expect(throws: JSONError.self) { try JSONReader.parse([0x22, 0xFF, 0x22]) }
    }

    @Test("depth and size limits")
    func limits() throws {
        let ok = String(repeating: "[", count: 32) + String(repeating: "]", count: 32)
        #expect(throws: Never.self) { try parse(ok) }
        #expect(reason("[" + ok + "]") == .tooDeep(limit: 32))
        let small = JSONLimits(maxBytes: 4, maxDepth: 1)
        #expect(throws: JSONError(.tooLarge(bytes: 5, limit: 4), offset: 4)) { try JSONReader.parse(Array("[1,2]".utf8), limits: small) }
        #expect(throws: JSONError(.tooDeep(limit: 1), offset: 1)) { try JSONReader.parse(Array("[[]]".utf8), limits: small) }
    }

    @Test("the writer escapes what must be escaped, and reads back to the same value")
    func writer() throws {
        let v = JSONValue.object([("k\"\\\n", .array([.string("\u{0}\u{1f}é\t"), .unsigned(.max), .null, .bool(true)]))])
        let text = JSONWriter.encode(v)
        #expect(String(decoding: text, as: UTF8.self) == #"{"k\"\\\n":["\u0000\u001fé\t",18446744073709551615,null,true]}"#)
        #expect(try JSONReader.parse(text) == v)
    }
}
