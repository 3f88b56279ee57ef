import Glibc
import PagerKernel
import Testing

/// The Wireshark dissector (Deploy/wireshark/pager.lua) run by real tshark: on the spec's
/// vectors made into a pcap, and on captures (tcpdump on the veth) of real migrations.
@Suite("Wireshark dissector on vectors and real captures", .serialized,
       .enabled(if: Tshark.present, Comment(rawValue: Tshark.missing)))
struct CaptureTests {
    /// Vector i of a file is TCP stream 40000 + i.
    static func port(_ i: Int) -> UInt16 { UInt16(40_000 + i) }

    @Test("every valid vector decodes to the fields its meaning names, reassembled from two segments")
    func validVectors() throws {
        let scratch = Scratch()
        let blocks = try WireVectorFile("valid.hex").blocks
        var pcap = PcapWriter()
        var all: [UInt8] = []
        for (i, b) in blocks.enumerated() {
            let frame = b.bytes()
            all += frame
            // Two segments: the header itself is cut for the 8-byte GOODBYE.
            pcap.send(port: CaptureTests.port(i), fromClient: true, frame, segmentBytes: (frame.count + 1) / 2)
        }
        // All of them again in one stream, in 1000-byte segments: several frames per segment.
        pcap.send(port: 39_999, fromClient: true, all, segmentBytes: 1000)
        let path = scratch.file("valid.pcap")
        try pcap.write(to: path)
        let fields = ["tcp.srcport", "_ws.expert.message"] + VectorMeaning.allFields
        let rows = try Tshark.fields(path, fields, preferences: ["pager.data_crc:TRUE"])
        for (i, b) in blocks.enumerated() {
            let meaning = try VectorMeaning(b.values["meaning"]!)
            let mine = rows.filter { $0["tcp.srcport"] == String(CaptureTests.port(i)) }
            try #require(mine.count == 1, "\(b.comment): \(mine.count) packets decoded as pager, expected the reassembled one")
            let row = mine[0]
            #expect(row["_ws.expert.message"] == "", "\(b.comment): \(row["_ws.expert.message"]!)")
            for field in VectorMeaning.allFields {
                let actual = row[field]!.split(separator: ",", omittingEmptySubsequences: false)
                    .map { VectorMeaning.normalize(String($0)) }.joined(separator: ",")
                if let want = meaning.expected[field] {
                    #expect(actual == want.joined(separator: ","), "\(b.comment): \(field)")
                } else if field != "pager.flags" {
                    #expect(actual == "", "\(b.comment): \(field) should be absent for \(meaning.type)")
                }
            }
        }
        let types = rows.filter { $0["tcp.srcport"] == "39999" }.flatMap { $0["pager.type"]!.split(separator: ",") }.map { VectorMeaning.normalize(String($0)) }
        let want = try blocks.map { try String(VectorMeaning.typeCodes[VectorMeaning($0.values["meaning"]!).type]!) }
        #expect(types == want, "one stream of every vector: \(Tshark.summary(path).suffix(3000))")
    }

    @Test("every invalid vector gets one expert error that names its §7 error and the message")
    func invalidVectors() throws {
        let scratch = Scratch()
        let blocks = try WireVectorFile("invalid.hex").blocks
        var pcap = PcapWriter()
        for (i, b) in blocks.enumerated() { pcap.send(port: CaptureTests.port(i), fromClient: true, b.bytes()) }
        let path = scratch.file("invalid.pcap")
        try pcap.write(to: path)
        let rows = try Tshark.fields(path, ["tcp.srcport", "_ws.expert.message", "_ws.expert.severity"], filter: "_ws.expert.severity == error")
        let names = Dictionary(uniqueKeysWithValues: VectorMeaning.typeCodes.map { ($0.value, $0.key) })
        for (i, b) in blocks.enumerated() {
            let error = b.values["error"]!, frame = b.bytes()
            let mine = rows.filter { $0["tcp.srcport"] == String(CaptureTests.port(i)) }
            try #require(mine.count == 1, "\(b.comment): no expert error")
            let message = mine[0]["_ws.expert.message"]!
            #expect(!mine[0]["_ws.expert.severity"]!.contains(","), "\(b.comment): more than one error: \(message)")
            #expect(message.hasPrefix(error + ": "), "\(b.comment): \(message), expected \(error)")
            let type = UInt64(frame[0]) << 8 | UInt64(frame[1])
            #expect(message.contains(names[type] ?? "unknown message type 0x"), "\(b.comment): \(message) names no message")
        }
    }

    @Test("after AUTH_RESPONSE on a connection that offered encryption, frames are sealed records; a clear refusal is not")
    func sealedVectors() throws {
        let scratch = Scratch()
        let h = try WireVectorFile("handshake.txt").blocks[0]
        var hello = h.bytes("hello")
        hello[23] |= 0x80 // offer `encryption` (the vector's HELLO offers authentication without it)
        var pcap = PcapWriter()
        let sealed: [(String, Bool)] = [("auth-challenge", false), ("auth-response", true), ("sealed-server-0", false),
                                        ("sealed-client-0", true), ("sealed-client-1", true)]
        pcap.send(port: 41_000, fromClient: true, hello)
        for (name, client) in sealed { pcap.send(port: 41_000, fromClient: client, h.bytes(name)) }
        // A refusal after AUTH_RESPONSE is a clear ERROR; the same frames without the offer are clear.
        let refusal = try WireVectorFile("valid.hex").blocks.first { $0.values["meaning"]!.hasPrefix("ERROR") }!.bytes()
        pcap.send(port: 41_001, fromClient: true, hello)
        pcap.send(port: 41_001, fromClient: false, h.bytes("auth-challenge"))
        pcap.send(port: 41_001, fromClient: true, h.bytes("auth-response"))
        pcap.send(port: 41_001, fromClient: false, refusal)
        pcap.send(port: 41_002, fromClient: true, h.bytes("hello"))
        for (name, client) in [("auth-challenge", false), ("auth-response", true), ("plain-server-0", false), ("plain-client-0", true)] {
            pcap.send(port: 41_002, fromClient: client, h.bytes(name))
        }
        let path = scratch.file("sealed.pcap")
        try pcap.write(to: path)
        let rows = try Tshark.fields(path, ["tcp.stream", "pager.type", "pager.sealed.length", "pager.sealed.plaintext_length",
                                            "pager.conn.encryption", "pager.welcome.session_id", "pager.request.offset", "pager.error.code",
                                            "_ws.expert.message"])
        let column = { (stream: String, f: String) in rows.filter { $0["tcp.stream"] == stream }.map { $0[f]! } }
        #expect(column("0", "pager.type") == ["0x0001", "0x0003", "0x0004", "0x0002", "0x0020", "0x0050"])
        #expect(column("0", "pager.sealed.length") == ["", "", "", "60", "40", "32"])
        #expect(column("0", "pager.sealed.plaintext_length") == ["", "", "", "44", "24", "16"])
        #expect(column("0", "pager.conn.encryption") == ["offered", "offered", "offered", "sealed record", "sealed record", "sealed record"])
        #expect(column("0", "pager.welcome.session_id").allSatisfy(\.isEmpty) && column("0", "pager.request.offset").allSatisfy(\.isEmpty))
        #expect(column("1", "pager.type") == ["0x0001", "0x0003", "0x0004", "0x007f"])
        #expect(column("1", "pager.error.code").last == "3" && column("1", "pager.sealed.length").allSatisfy(\.isEmpty))
        #expect(column("2", "pager.welcome.session_id") == ["", "", "", "0x0123456789abcdef", ""])
        #expect(column("2", "pager.request.offset") == ["", "", "", "", "0x0000000000200000"])
        #expect(rows.allSatisfy { $0["_ws.expert.message"]!.isEmpty }, "\(Tshark.summary(path))")
    }
}
