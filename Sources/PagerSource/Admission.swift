import PagerKernel
import PagerTransport

/// Which connections may be in their handshake, and who makes room for whom: pure, so that
/// tests drive it with fake handles; ``Admission`` holds the server's one under a lock.
///
/// Nothing but a thread and a socket is spent on a peer before it has completed its
/// handshake, and both are bounded here: at most `capacity` connections in handshake at once,
/// at most `perAddress` of them from one host. A full table does not refuse the newcomer: it
/// evicts the *oldest* handshake (of the newcomer's host when that host is at its cap, else of
/// all), because a flood's connections sit idle while a real destination's handshake takes a
/// round trip, so the oldest is nearly always the flood's and a destination that retries gets
/// in. Refusing the newcomer instead would let a flood that got there first lock everyone out.
///
/// An evicted connection stays in the table, as ``State/evicted``, until its thread has ended,
/// against a second allowance of `capacity`: the newcomer is admitted while its victim's thread
/// ends, not after. Under a flood that re-opens what is evicted, a destination's connection
/// waits in the kernel's accept queue behind the flood's, so the accept loop's pace is the
/// destination's: waiting for each victim made its handshake take 180 ms instead of 113 (debug
/// build, `pager-bench flood`). The threads in handshake, ending ones included, still never
/// exceed twice the cap. Scans are linear: the table holds at most 2 × `capacity` entries.
struct AdmissionTable<Handle> {
    /// A connection's place in the table; a smaller number was admitted earlier.
    struct Ticket: Hashable, Sendable {
        let number: UInt64
    }

    enum State: Equatable {
        /// Its thread runs the handshake.
        case handshaking
        /// Its socket is being shut down to make room; its thread is ending.
        case evicted
    }

    private struct Entry {
        let ticket: Ticket
        let address: String
        let handle: Handle
        var state: State
    }

    /// At most this many connections in handshake, and as many again evicted and ending.
    var capacity: Int
    /// At most this many of them from one host.
    var perAddress: Int
    /// Oldest first: tickets only grow, and entries are appended.
    private var entries: [Entry] = []
    private var nextTicket: UInt64 = 1

    init(capacity: Int, perAddress: Int) {
        precondition(capacity > 0 && perAddress > 0, "admission needs room for one handshake")
        self.capacity = capacity
        self.perAddress = perAddress
    }

    /// Connections in the table: the threads in handshake.
    var count: Int { entries.count }

    /// Connections from `address` in the table in `state` (any state when nil).
    func count(from address: String? = nil, in state: State? = nil) -> Int {
        entries.reduce(0) { n, e in
            n + ((address == nil || e.address == address) && (state == nil || e.state == state) ? 1 : 0)
        }
    }

    /// Marks as evicted the handshakes that must go so that one more from `address` fits,
    /// and returns their handles for the caller to shut down: the oldest of `address` while
    /// it has `perAddress` handshaking, then the oldest of all while there are `capacity`.
    mutating func evict(toAdmit address: String) -> [Handle] {
        var victims: [Handle] = []
        while count(from: address, in: .handshaking) >= perAddress, let i = oldestHandshaking(from: address) {
            victims.append(markEvicted(i))
        }
        while count(in: .handshaking) >= capacity, let i = oldestHandshaking(from: nil) {
            victims.append(markEvicted(i))
        }
        return victims
    }

    /// Whether a thread for one more handshake from `address` fits now: under both caps once
    /// ``evict(toAdmit:)`` has made room, unless `capacity` evicted threads are still ending
    /// (then it turns true as they end).
    func hasRoom(for address: String) -> Bool {
        count(in: .handshaking) < capacity && count(from: address, in: .handshaking) < perAddress
            && entries.count < 2 * capacity
    }

    /// Enters a handshake from `address` into the table (there must be room).
    mutating func admit(_ handle: Handle, from address: String) -> Ticket {
        precondition(hasRoom(for: address), "admitted without room: evict and wait first")
        let ticket = Ticket(number: nextTicket)
        nextTicket += 1
        entries.append(Entry(ticket: ticket, address: address, handle: handle, state: .handshaking))
        return ticket
    }

    /// The handshake of `ticket` is over (completed, failed, or ended by its eviction): it
    /// leaves the table. Returns the state it left in (nil if it was not there).
    @discardableResult
    mutating func remove(_ ticket: Ticket) -> State? {
        guard let i = entries.firstIndex(where: { $0.ticket == ticket }) else { return nil }
        return entries.remove(at: i).state
    }

    private func oldestHandshaking(from address: String?) -> Int? {
        entries.firstIndex { $0.state == .handshaking && (address == nil || $0.address == address) }
    }

    private mutating func markEvicted(_ i: Int) -> Handle {
        entries[i].state = .evicted
        return entries[i].handle
    }
}

/// How a connection's handshake ended.
enum HandshakeEnd: Equatable {
    /// It completed: the connection is served as its session's demand or push channel.
    case completed
    /// Another connection needed its place (``AdmissionTable``).
    case evicted
    /// The whole handshake did not arrive before its deadline.
    case timedOut
    /// The peer closed or reset the connection before completing it.
    case abandoned
    /// The server refused it: a bad or malformed HELLO, or no thread to run it on.
    case refused

    /// How a handshake that threw `error` ended (an eviction is the table's to say).
    init(failure error: any Error) {
        switch error {
        case ChannelError.deadline: self = .timedOut
        case ChannelError.closed, ChannelError.truncated, ChannelError.kernel: self = .abandoned
        default: self = .refused
        }
    }
}

/// Handshakes that did not complete, by how they ended.
struct HandshakeCounts: Equatable {
    var evicted = 0
    var timedOut = 0
    var refused = 0
    var abandoned = 0

    mutating func count(_ end: HandshakeEnd) {
        switch end {
        case .completed: break
        case .evicted: evicted += 1
        case .timedOut: timedOut += 1
        case .refused: refused += 1
        case .abandoned: abandoned += 1
        }
    }
}

/// The server's admission control: its ``AdmissionTable`` of sockets under a lock that the
/// accept loop waits on for room, and the counts of handshakes that did not complete.
final class Admission: Sendable {
    typealias Ticket = AdmissionTable<TCPSocket>.Ticket

    private struct Book {
        var table: AdmissionTable<TCPSocket>
        var counts = HandshakeCounts()
    }

    private let book: WaitableState<Book>

    init(capacity: Int = 64, perAddress: Int = 8) {
        book = WaitableState(Book(table: AdmissionTable(capacity: capacity, perAddress: perAddress)))
    }

    /// Sets the caps (before the server accepts; a table already fuller just evicts more).
    func limit(to capacity: Int, perAddress: Int) {
        book.withLock {
            $0.table.capacity = capacity
            $0.table.perAddress = perAddress
        }
    }

    /// Enters `socket` into the table, for the accept loop (the only caller, so nothing else
    /// takes the room it waits for): evicts what must go and shuts their sockets down so that
    /// their threads end; waits only while `capacity` evicted threads are still ending.
    /// Returns the ticket and how many were evicted, or nil if `stopped()` turned true while
    /// it waited.
    func admit(_ socket: TCPSocket, unless stopped: () -> Bool) -> (Ticket, evicted: Int)? {
        let address = String(socket.peerHost)
        let victims = book.change { b in
            let victims = b.table.evict(toAdmit: address)
            b.counts.evicted += victims.count
            return victims
        }
        // Outside the lock: a shutdown wakes the victim's poll, and its thread then takes the
        // lock to leave the table. A victim whose handshake completed since it was marked
        // learns from completed(_:) that it was evicted.
        for victim in victims { victim.shutdown() }
        guard book.wait(until: { $0.table.hasRoom(for: address) || stopped() }), !stopped() else { return nil }
        return book.change { ($0.table.admit(socket, from: address), victims.count) }
    }

    /// The handshake of `ticket` completed: it leaves the table. False if it was evicted
    /// meanwhile (its socket is shut down, so its session's first send fails).
    func completed(_ ticket: Ticket) -> Bool {
        book.change { $0.table.remove(ticket) } != .evicted
    }

    /// The handshake of `ticket` failed with `error` (or never started: `error` nil, no thread
    /// to run it): it leaves the table, counted by how it ended, which is returned.
    func failed(_ ticket: Ticket, _ error: (any Error)?) -> HandshakeEnd {
        book.change { b in
            let end: HandshakeEnd = b.table.remove(ticket) == .evicted ? .evicted : error.map(HandshakeEnd.init(failure:)) ?? .refused
            if end != .evicted { b.counts.count(end) } // an eviction was counted when it was decided
            return end
        }
    }

    /// Wakes the accept loop waiting for room, to see that the server stops.
    func wakeAll() { book.wakeAll() }

    /// Connections whose thread runs their handshake (not the evicted ones still ending).
    var inHandshake: Int { book.withLock { $0.table.count(in: .handshaking) } }

    /// Threads in the table: those in handshake and the evicted ones still ending.
    var threads: Int { book.withLock { $0.table.count } }

    /// Handshakes that did not complete so far.
    var counts: HandshakeCounts { book.withLock { $0.counts } }

    /// The table and the counts at one moment, for waits on them.
    struct Snapshot {
        var counts: HandshakeCounts
        /// Connections whose thread runs their handshake.
        var handshaking: Int
        /// Those plus the evicted ones whose thread has not ended yet.
        var threads: Int
    }

    /// Blocks until `satisfied` holds for the table (true), or `deadline` (monotonic ns) passes.
    func wait(until satisfied: (Snapshot) -> Bool, deadline: UInt64) -> Bool {
        book.wait(until: { b in
            satisfied(Snapshot(counts: b.counts, handshaking: b.table.count(in: .handshaking), threads: b.table.count))
        }, deadline: deadline)
    }
}
