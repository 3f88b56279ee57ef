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

    @Test("on a port other than 7070 a connection is the pager's when it starts with a HELLO, and only then")
    func heuristic() throws {
        let scratch = Scratch()
        let h = try WireVectorFile("handshake.txt").blocks[0]
        let ping = try WireVectorFile("valid.hex").blocks.first { $0.values["meaning"]!.hasPrefix("PING") }!.bytes()
        var pcap = PcapWriter(serverPort: 9_001)
        pcap.send(port: 42_000, fromClient: true, h.bytes("hello"))
        pcap.send(port: 42_000, fromClient: false, h.bytes("auth-challenge"))
        pcap.send(port: 42_000, fromClient: true, h.bytes("auth-response") + ping, segmentBytes: 50)
        pcap.send(port: 42_001, fromClient: true, ping)
        let path = scratch.file("heuristic.pcap")
        try pcap.write(to: path)
        let rows = try Tshark.fields(path, ["tcp.port", "pager.type", "pager.conn.channel"])
        #expect(rows.allSatisfy { $0["tcp.port"]!.contains("42000") }, "a stream without HELLO was taken: \(rows)")
        #expect(rows.map { $0["pager.type"]! } == ["0x0001", "0x0003", "0x0004,0x0050"])
        #expect(rows.allSatisfy { $0["pager.conn.channel"]!.split(separator: ",").allSatisfy { $0 == "demand" } })
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
        let fields = ["tcp.stream", "pager.type", "pager.sealed.length", "pager.sealed.plaintext_length", "pager.conn.encryption",
                      "pager.welcome.session_id", "pager.request.offset", "pager.error.code", "_ws.expert.message"]
        let rows = try Tshark.fields(path, fields)
        // What depends on earlier frames is the same when frames are dissected twice.
        #expect(try Tshark.fields(path, fields, twoPass: true) == rows, "tshark -2 differs")
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

/// Real migrations (release pagerd and pager-workload in two namespaces) captured on the veth.
@Suite("Wireshark dissector on captured migrations", .serialized,
       .enabled(if: Tshark.present, Comment(rawValue: Tshark.missing)),
       .enabled(if: isRoot, "needs root for network namespaces, tcpdump and userfaultfd"),
       .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct MigrationCaptureTests {
    static let sizeMiB = 16
    static let pages = sizeMiB * 256
    static let seed: UInt64 = 11

    /// Authenticated, not encrypted (the daemons' default with a key): frames after the
    /// handshake travel in the clear. The workload faults on a tenth of its pages (so there
    /// are PAGE_REQUESTs) and waits for the push to bring the rest (so the push completes,
    /// PUSH_COMPLETE, rather than the faults fetching the last pages first).
    static let migration = Migration(sizeMiB: sizeMiB, backing: "anon", access: "working-set", seed: seed)

    static let fields = ["tcp.stream", "pager.type", "pager.length", "pager.hello.channel", "pager.hello.client_name", "pager.hello.features",
                         "pager.welcome.session_id", "pager.region.region_id", "pager.region.length", "pager.region.page_shift",
                         "pager.request.offset", "pager.request.length", "pager.data.offset", "pager.data.length", "pager.data.region_id",
                         "pager.push_complete.region_id", "pager.push_complete.bytes", "pager.sealed.length", "pager.conn.frame",
                         "tcp.segment.count", "_ws.expert.message"]

    func expectMigrated(_ c: MigrationCapture) {
        #expect(c.outcome.workloadStatus == 0 && c.outcome.workload.contains("mismatches=0"), "workload: \(c.outcome.workload)\ndest: \(c.outcome.dest)")
        #expect(c.outcome.destStatus == 0, "\(c.outcome.dest)")
        #expect(c.tcpdump.contains("\n0 packets dropped by kernel"), "\(c.tcpdump)")
    }

    /// No frame of the capture is malformed for the dissector, and the dissector raised no Lua
    /// error (TCP's own notes, such as a full receive window, are not the pager's business).
    func expectNoPagerErrors(_ pcap: String) throws {
        let bad = try Tshark.fields(pcap, ["_ws.expert.message"], filter: "pager.malformed || pager.checksum_bad || _ws.lua.error")
        #expect(bad.isEmpty, "\(bad.prefix(5).map { $0["_ws.expert.message"]! })")
    }

    /// Every value of `field` over every frame of `rows` (several frames may share a packet).
    func values(_ rows: [[String: String]], _ field: String) -> [String] {
        rows.flatMap { $0[field]!.split(separator: ",").map(String.init) }
    }
    func number(_ s: String) -> UInt64 { UInt64(VectorMeaning.normalize(s))! }

    @Test("a plain migration decodes: both HELLOs, WELCOMEs of one session, the REGION, requests and data inside it, PUSH_COMPLETE, GOODBYE")
    func plain() throws {
        let scratch = Scratch()
        let c = try MigrationCapture(MigrationCaptureTests.migration, name: "plain", scratch: scratch)
        expectMigrated(c)
        let rows = try Tshark.fields(c.pcap, MigrationCaptureTests.fields)
        let length = UInt64(MigrationCaptureTests.sizeMiB) << 20
        let types = Set(values(rows, "pager.type").map(number))
        for (name, code) in [("HELLO", 0x01), ("AUTH_CHALLENGE", 0x03), ("AUTH_RESPONSE", 0x04), ("WELCOME", 0x02), ("REGION", 0x10),
                             ("AUTH_CONFIRM", 0x05), ("PAGE_REQUEST", 0x20), ("PAGE_DATA", 0x21), ("PUSH_COMPLETE", 0x40), ("GOODBYE", 0x7e)] {
            #expect(types.contains(UInt64(code)), "no \(name) decoded")
        }
        try expectNoPagerErrors(c.pcap)
        #expect(values(rows, "pager.sealed.length").isEmpty)
        // Two connections: the demand one (channel 0) and the push one (channel 1), one client name.
        #expect(values(rows, "pager.hello.channel").sorted() == ["0", "1"])
        #expect(values(rows, "pager.hello.client_name") == ["pagerd-dest", "pagerd-dest"])
        #expect(Set(rows.map { $0["tcp.stream"]! }).count == 2)
        let sessions = values(rows, "pager.welcome.session_id")
        #expect(sessions.count == 2 && Set(sessions).count == 1 && number(sessions[0]) != 0, "\(sessions)")
        // One region on each connection: 16 MiB of 4 KiB pages, all of which the push sent.
        #expect(values(rows, "pager.region.length").map(number) == [length, length])
        #expect(values(rows, "pager.region.page_shift") == ["12", "12"])
        let pushed = values(rows, "pager.push_complete.bytes").map(number)
        #expect(!pushed.isEmpty && pushed.allSatisfy { $0 == length }, "\(pushed)")
        #expect(Set(values(rows, "pager.push_complete.region_id")) == Set(values(rows, "pager.region.region_id")))
        for (o, l) in [("pager.request.offset", "pager.request.length"), ("pager.data.offset", "pager.data.length")] {
            let offsets = values(rows, o).map(number), lengths = values(rows, l).map(number)
            #expect(!offsets.isEmpty && offsets.count == lengths.count)
            #expect(zip(offsets, lengths).allSatisfy { $0 % 4096 == 0 && $1 > 0 && $0 + $1 <= length }, "\(o) outside the region")
        }
        // PAGE_DATA larger than a segment (1448 bytes on this veth), reassembled by the dissector.
        let reassembled = rows.filter { $0["pager.type"]!.contains("0x0021") && Int($0["tcp.segment.count"]!) ?? 0 > 1 }
        #expect(reassembled.contains { values([$0], "pager.length").contains { Int($0)! > 1448 } }, "no PAGE_DATA reassembled from segments")
        // The memory's content is in the capture: the marker search finds every page.
        let missing = MigrationCapture.pagesNotFound(in: try readFileBytes(c.pcap), pages: MigrationCaptureTests.pages, seed: MigrationCaptureTests.seed)
        #expect(missing.isEmpty, "\(missing.count) pages' markers not in the plain capture, first \(missing.prefix(5))")
    }

    @Test("an encrypted migration shows sealed records after each handshake, no PAGE_DATA, and none of the memory's bytes")
    func encrypted() throws {
        let scratch = Scratch()
        var m = MigrationCaptureTests.migration
        m.destExtra = ["--encrypt"]
        m.sourceExtra = ["--encrypt"]
        let c = try MigrationCapture(m, name: "encrypted", scratch: scratch)
        expectMigrated(c)
        #expect(c.outcome.dest.contains("authenticated, encrypted"), "\(c.outcome.dest)")
        let rows = try Tshark.fields(c.pcap, MigrationCaptureTests.fields + ["pager.sealed.plaintext_length"])
        try expectNoPagerErrors(c.pcap)
        // In the clear: HELLO, AUTH_CHALLENGE, AUTH_RESPONSE on each connection, HELLO offering encryption.
        #expect(values(rows, "pager.hello.channel").sorted() == ["0", "1"])
        #expect(values(rows, "pager.hello.features").allSatisfy { number($0) & 0x84 == 0x84 })
        for stream in Set(rows.map { $0["tcp.stream"]! }) {
            let frames = rows.filter { $0["tcp.stream"] == stream }
            let types = values(frames, "pager.type").map(number)
            #expect(Array(types.prefix(3)) == [0x01, 0x03, 0x04], "stream \(stream): \(types.prefix(5))")
            #expect(types.count > 6 && values(frames, "pager.sealed.length").count == types.count - 3, "stream \(stream): every frame after AUTH_RESPONSE is sealed")
        }
        for field in ["pager.welcome.session_id", "pager.region.length", "pager.request.offset", "pager.data.offset", "pager.push_complete.bytes"] {
            #expect(values(rows, field).isEmpty, "\(field) decoded from a sealed session")
        }
        // Sealed PAGE_DATA records keep their header: type 0x0021, length = plaintext + 16.
        let data = rows.filter { $0["pager.type"]!.contains("0x0021") }
        #expect(!data.isEmpty)
        #expect(zip(values(rows, "pager.sealed.length"), values(rows, "pager.sealed.plaintext_length")).allSatisfy { Int($0)! == Int($1)! + 16 })
        // Every page with content (14 of every 16) stays hidden.
        let hidden = MigrationCapture.pagesNotFound(in: try readFileBytes(c.pcap), pages: MigrationCaptureTests.pages, seed: MigrationCaptureTests.seed)
        #expect(hidden.count == MigrationCaptureTests.pages / 16 * 14, "\(MigrationCaptureTests.pages / 16 * 14 - hidden.count) pages' markers visible in the encrypted capture")
    }
}
