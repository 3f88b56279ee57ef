import PagerCrypto
import PagerKernel

/// The sessions of a server: those open (a connection may join or resume them, whether or
/// not one is attached now) and the totals of those ended. Taken when a connection joins, when
/// a session ends and when totals are read, never per request.
final class SessionRegistry: Sendable {
    private struct Book {
        /// Sessions not yet ended: served, or lingering without a connection for a resume.
        var open: [UInt64: SourceSession] = [:]
        /// Sessions started, failures, and the counts of sessions ended.
        var ended = SourceServer.Counters()
    }

    /// A condition too: ``waitUntilAllEnded(deadlineForFirst:)`` wakes when a session opens or
    /// ends.
    private let book = WaitableState(Book())

    /// A new session (its demand connection): open from now on.
    func open(_ session: SourceSession) {
        book.change {
            $0.open[session.id] = session
            $0.ended.sessions += 1
        }
    }

    /// The session a connection joins or resumes; nil if there is none with that token
    /// (compared in constant time: the token is the only proof without keys).
    func resume(_ id: UInt64, token: [UInt8]) -> SourceSession? {
        book.withLock { b -> SourceSession? in
            guard let session = b.open[id], !session.isClosed, constantTimeEqual(session.token, token) else { return nil }
            return session
        }
    }

    /// The token of a session a connection may join or resume, for the key schedule of its
    /// authentication; nil if there is none.
    func token(of id: UInt64) -> [UInt8]? {
        book.withLock { $0.open[id]?.token }
    }

    /// The session a connection resumes after its authentication verified (with the
    /// session's token in the key schedule); nil if it ended meanwhile.
    func resumeAuthenticated(_ id: UInt64) -> SourceSession? {
        book.withLock { b -> SourceSession? in
            guard let session = b.open[id], !session.isClosed else { return nil }
            return session
        }
    }

    /// `session` ended (closed, and no connection attached): its counts join the totals, and
    /// no connection can resume it. True the first time, false after.
    func end(_ session: SourceSession) -> Bool {
        book.change { b -> Bool in
            guard b.open.removeValue(forKey: session.id) != nil else { return false }
            session.counters.add(to: &b.ended)
            b.ended.resumes += session.resumes
            return true
        }
    }

    /// A connection refused or a session ended by an error.
    func failed() { book.withLock { $0.ended.failedSessions += 1 } }

    /// A session closed because no connection resumed it within the linger time.
    func lingerExpired() {
        book.withLock {
            $0.ended.failedSessions += 1
            $0.ended.lingerExpired += 1
        }
    }

    /// A connection refused because its peer did not authenticate.
    func refusedAuthentication() {
        book.withLock {
            $0.ended.failedSessions += 1
            $0.ended.authenticationFailures += 1
        }
    }

    /// Sessions not ended (the ones ``SourceServer/stop()`` closes).
    var served: [SourceSession] { book.withLock { Array($0.open.values) } }

    /// Totals over all sessions: ended ones plus those still open.
    var totals: SourceServer.Counters {
        book.withLock { b in
            var totals = b.ended
            for session in b.open.values {
                session.counters.add(to: &totals)
                totals.resumes += session.resumes
            }
            return totals
        }
    }

    /// Blocks until at least one session was opened and none is open any more (true), or
    /// until `deadline` (monotonic ns) passes with no session opened yet (false).
    func waitUntilAllEnded(deadlineForFirst deadline: UInt64) -> Bool {
        if !book.wait(until: { $0.ended.sessions > 0 }, deadline: deadline) { return false }
        _ = book.wait(until: { $0.open.isEmpty })
        return true
    }
}
