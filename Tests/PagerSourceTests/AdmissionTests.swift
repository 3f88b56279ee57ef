import PagerKernel
import PagerTransport
import PagerWire
import Testing
@testable import PagerSource

/// The pure admission policy, with names for handles: who is admitted, who is evicted, when
/// there is room again.
@Suite("Admission: the handshake table's policy")
struct AdmissionTests {
    typealias Table = AdmissionTable<String>

    /// Admits `names` in order, each from its host (`host` of name), with room made first as
    /// the server does (evicted ones removed at once, as if their threads ended at once).
    @discardableResult
    static func flood(_ table: inout Table, _ names: [(name: String, host: String)],
                      tickets: inout [String: Table.Ticket]) -> [String] {
        var evicted: [String] = []
        for (name, host) in names {
            let victims = table.evict(toAdmit: host)
            for v in victims { #expect(table.remove(tickets[v]!) == .evicted) }
            evicted += victims
            #expect(table.hasRoom(for: host))
            tickets[name] = table.admit(name, from: host)
        }
        return evicted
    }

    @Test("the global cap: the oldest handshake of all is evicted to admit a newcomer from a new host")
    func globalCap() {
        var table = Table(capacity: 3, perAddress: 8)
        var tickets: [String: Table.Ticket] = [:]
        #expect(AdmissionTests.flood(&table, [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")], tickets: &tickets).isEmpty)
        #expect(!table.hasRoom(for: "10.0.0.4"))
        #expect(table.evict(toAdmit: "10.0.0.4") == ["a"])
        // Evicted, its thread still ending: not evicted twice, and it leaves as evicted.
        #expect(table.count == 3 && table.count(in: .handshaking) == 2)
        #expect(table.evict(toAdmit: "10.0.0.4").isEmpty)
        #expect(table.remove(tickets["a"]!) == .evicted)
        #expect(table.hasRoom(for: "10.0.0.4"))
        tickets["d"] = table.admit("d", from: "10.0.0.4")
        #expect(AdmissionTests.flood(&table, [("e", "10.0.0.5"), ("f", "10.0.0.5")], tickets: &tickets) == ["b", "c"])
    }

    @Test("evicted threads still ending: a newcomer gets in at once, until as many as the cap are ending")
    func endingAllowance() {
        var table = Table(capacity: 2, perAddress: 8)
        var admitted: [Table.Ticket] = []
        var evicted: [String] = []
        // Nobody's thread ends: each newcomer evicts the oldest handshake and is admitted.
        for name in ["a", "b", "c", "d"] {
            evicted += table.evict(toAdmit: "h")
            #expect(table.hasRoom(for: "h"), "\(name)")
            admitted.append(table.admit(name, from: "h"))
        }
        #expect(evicted == ["a", "b"] && table.count == 4 && table.count(in: .handshaking) == 2)
        #expect(table.evict(toAdmit: "h") == ["c"])
        #expect(!table.hasRoom(for: "h"), "2 handshaking-or-room and 2 ending: no more threads")
        #expect(table.remove(admitted[0]) == .evicted)
        #expect(table.hasRoom(for: "h"), "one ended")
    }

    @Test("the per-host cap: a host at its cap evicts its own oldest, not an older handshake of another host")
    func perAddressCap() {
        var table = Table(capacity: 64, perAddress: 2)
        var tickets: [String: Table.Ticket] = [:]
        AdmissionTests.flood(&table, [("legit", "10.0.0.9"), ("x1", "10.0.0.1"), ("x2", "10.0.0.1")], tickets: &tickets)
        #expect(table.hasRoom(for: "10.0.0.9") && !table.hasRoom(for: "10.0.0.1"))
        #expect(table.evict(toAdmit: "10.0.0.9").isEmpty, "another host is under its cap and the table has room")
        let evicted = AdmissionTests.flood(&table, (3...10).map { ("x\($0)", "10.0.0.1") }, tickets: &tickets)
        #expect(evicted == (1...8).map { "x\($0)" }, "oldest first")
        #expect(table.count(from: "10.0.0.1") == 2 && table.count(from: "10.0.0.9") == 1)
    }

    @Test("both caps: once the host's own oldest is evicted, the table has room, so no one else goes")
    func bothCaps() {
        var table = Table(capacity: 3, perAddress: 2)
        var tickets: [String: Table.Ticket] = [:]
        AdmissionTests.flood(&table, [("other", "10.0.0.2"), ("x1", "10.0.0.1"), ("x2", "10.0.0.1")], tickets: &tickets)
        #expect(table.evict(toAdmit: "10.0.0.1") == ["x1"])
    }

    @Test("a completed handshake leaves the table and frees its place; one evicted as it completed says so")
    func release() {
        var table = Table(capacity: 2, perAddress: 2)
        var tickets: [String: Table.Ticket] = [:]
        AdmissionTests.flood(&table, [("a", "h"), ("b", "h")], tickets: &tickets)
        #expect(!table.hasRoom(for: "h"))
        #expect(table.remove(tickets["a"]!) == .handshaking, "completed")
        #expect(table.hasRoom(for: "h") && table.count == 1)
        #expect(table.remove(tickets["a"]!) == nil, "gone already")
        tickets["c"] = table.admit("c", from: "h")
        #expect(table.evict(toAdmit: "h") == ["b"])
        #expect(table.remove(tickets["b"]!) == .evicted, "b completed after it was chosen: it learns it was evicted")
        #expect(table.remove(tickets["c"]!) == .handshaking)
        #expect(table.count == 0)
    }

    @Test("how a failed handshake ended, from its error")
    func classification() {
        #expect(HandshakeEnd(failure: ChannelError.deadline(peer: "p", waitedFor: "HELLO", .after(nanoseconds: 1))) == .timedOut)
        #expect(HandshakeEnd(failure: ChannelError.closed(peer: "p")) == .abandoned)
        #expect(HandshakeEnd(failure: ChannelError.truncated(peer: "p", frame: .hello, received: 9, expected: 100)) == .abandoned)
        #expect(HandshakeEnd(failure: ChannelError.kernel(KernelError("recv", .connectionReset))) == .abandoned)
        #expect(HandshakeEnd(failure: ChannelError.malformed(peer: "p", .frameTooLarge(.hello, length: 2000, limit: 1024))) == .refused)
        #expect(HandshakeEnd(failure: SessionError.refuse(.unsupportedVersion, "v")) == .refused)
        var counts = HandshakeCounts()
        for end in [HandshakeEnd.timedOut, .abandoned, .abandoned, .refused, .evicted, .completed] { counts.count(end) }
        #expect(counts == HandshakeCounts(evicted: 1, timedOut: 1, refused: 1, abandoned: 2))
    }
}
