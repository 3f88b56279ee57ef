import PagerCrypto
import PagerKernel

/// The sessions of a server: those a push connection may still resume, those with a
/// connection still being served, and the totals of those fully ended. Taken when a
/// connection joins or leaves and when totals are read, never per request.
final class SessionRegistry: Sendable {
    private struct Book {
        /// Sessions whose demand connection is being served: a push connection may join them.
        var resumable: [UInt64: SourceSession] = [:]
        /// Sessions with at least one connection being served, and how many.
        var attached: [UInt64: (session: SourceSession, connections: Int)] = [:]
        /// Sessions started, failures, and the counts of sessions no longer attached.
        var ended = SourceServer.Counters()
    }

    /// A condition too: ``waitUntilAllEnded(deadlineForFirst:)`` wakes when a session opens or
    /// its last connection ends.
    private let book = WaitableState(Book())

    /// A new session (its demand connection): resumable and attached from now on.
    func open(_ session: SourceSession) {
        book.change {
            $0.resumable[session.id] = session
            $0.attached[session.id] = (session, 1)
            $0.ended.sessions += 1
        }
    }

    /// The session a push connection resumes, attached to it; nil if there is none with that
    /// token (compared in constant time: the token is the only proof without keys).
    func resume(_ id: UInt64, token: [UInt8]) -> SourceSession? {
        book.withLock { b -> SourceSession? in
            guard let session = b.resumable[id], constantTimeEqual(session.token, token) else { return nil }
            b.attached[id, default: (session, 0)].connections += 1
            return session
        }
    }

    /// The token of a session a push connection may resume, for the key schedule of its
    /// authentication; nil if there is none.
    func token(of id: UInt64) -> [UInt8]? {
        book.withLock { $0.resumable[id]?.token }
    }

    /// The session a push connection resumes after its authentication verified (with the
    /// session's token in the key schedule), attached to it; nil if it ended meanwhile.
    func resumeAuthenticated(_ id: UInt64) -> SourceSession? {
        book.withLock { b -> SourceSession? in
            guard let session = b.resumable[id] else { return nil }
            b.attached[id, default: (session, 0)].connections += 1
            return session
        }
    }

    /// A connection of `session` ended (`demand`: its demand connection, after which no push
    /// can join it). The session's counts join the totals once its last connection ended.
    func leave(_ session: SourceSession, demand: Bool) {
        book.change { b in
            if demand { b.resumable[session.id] = nil }
            guard let entry = b.attached[session.id] else { return }
            if entry.connections > 1 {
                b.attached[session.id]!.connections -= 1
                return
            }
            b.attached[session.id] = nil
            session.counters.add(to: &b.ended)
        }
    }

    /// A connection refused or a session ended by an error.
    func failed() { book.withLock { $0.ended.failedSessions += 1 } }

    /// A connection refused because its peer did not authenticate.
    func refusedAuthentication() {
        book.withLock {
            $0.ended.failedSessions += 1
            $0.ended.authenticationFailures += 1
        }
    }

    /// Sessions with a connection being served (the ones ``SourceServer/stop()`` closes).
    var served: [SourceSession] { book.withLock { $0.attached.values.map(\.session) } }

    /// Totals over all sessions: ended ones plus those still being served.
    var totals: SourceServer.Counters {
        book.withLock { b in
            var totals = b.ended
            for entry in b.attached.values { entry.session.counters.add(to: &totals) }
            return totals
        }
    }

    /// Blocks until at least one session was opened and none is attached any more (true), or
    /// until `deadline` (monotonic ns) passes with no session opened yet (false).
    func waitUntilAllEnded(deadlineForFirst deadline: UInt64) -> Bool {
        if !book.wait(until: { $0.ended.sessions > 0 }, deadline: deadline) { return false }
        _ = book.wait(until: { $0.attached.isEmpty })
        return true
    }
}
