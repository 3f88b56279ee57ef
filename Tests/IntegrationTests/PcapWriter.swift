import Glibc

/// Writes a classic pcap (Ethernet, IPv4, TCP) of made-up TCP streams, so tshark can read wire
/// vectors as if captured: each stream is client 10.0.0.2:port ↔ server 10.0.0.1:serverPort with
/// sequence numbers kept per direction (no handshake: tshark's TCP needs none to reassemble).
struct PcapWriter {
    private(set) var bytes: [UInt8] = []
    private var sequence: [UInt32: UInt32] = [:] // (port << 1 | direction) -> next sequence number
    private var packets: UInt32 = 0
    /// 7070 is the dissector's registered port; any other is left to its heuristic.
    let serverPort: UInt16

    init(serverPort: UInt16 = 7070) {
        self.serverPort = serverPort
        // Magic, version 2.4, timezone 0, sigfigs 0, snaplen, linktype 1 (Ethernet); little-endian.
        le32(0xa1b2_c3d4); le16(2); le16(4); le32(0); le32(0); le32(262_144); le32(1)
    }

    /// Appends `payload` as one TCP segment of stream `port`, from the client or the server.
    mutating func segment(port: UInt16, fromClient: Bool, _ payload: ArraySlice<UInt8>) {
        let key = UInt32(port) << 1 | (fromClient ? 0 : 1)
        let seq = sequence[key, default: 1]
        sequence[key] = seq &+ UInt32(payload.count)
        let (src, dst): ([UInt8], [UInt8]) = fromClient ? ([10, 0, 0, 2], [10, 0, 0, 1]) : ([10, 0, 0, 1], [10, 0, 0, 2])
        let (sport, dport) = fromClient ? (port, serverPort) : (serverPort, port)
        var packet: [UInt8] = Array(repeating: 0, count: 12) + [0x08, 0x00] // Ethernet: zero MACs, IPv4
        packet += [0x45, 0] + be16(UInt16(40 + payload.count)) + [0, 0, 0, 0, 64, 6, 0, 0] + src + dst
        packet += be16(sport) + be16(dport) + be32(seq) + be32(0) + [0x50, 0x18] + be16(65535) + [0, 0, 0, 0]
        packet += payload
        le32(packets); le32(0); le32(UInt32(packet.count)); le32(UInt32(packet.count))
        bytes += packet
        packets += 1
    }

    /// Appends `data` to stream `port` cut into segments of at most `segmentBytes`.
    mutating func send(port: UInt16, fromClient: Bool, _ data: [UInt8], segmentBytes: Int = 65_000) {
        var at = 0
        while at < data.count {
            let end = min(data.count, at + segmentBytes)
            segment(port: port, fromClient: fromClient, data[at..<end])
            at = end
        }
    }

    func write(to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw HarnessError("cannot create \(path)") }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw HarnessError("short write to \(path)") }
    }

    private mutating func le16(_ v: UInt16) { bytes += [UInt8(v & 0xff), UInt8(v >> 8)] }
    private mutating func le32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8((v >> (8 * UInt32(i))) & 0xff)) } }
    private func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
    private func be32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (24 - 8 * UInt32($0))) & 0xff) } }
}
