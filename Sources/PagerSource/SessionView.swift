/// One open session as the status query shows it: who, whether its connections are attached
/// (a session without them lingers for a resume), and its counts so far.
public struct SessionView: Sendable {
    public let id: UInt64
    public let peer: String
    public let encrypted: Bool
    /// Both connections attached (false: lingering, or the push has not joined yet).
    public let connected: Bool
    public let resumes: Int
    public let demandRequests: Int
    public let prefetchRequests: Int
    public let bytesSent: UInt64
    public let zeroBytes: UInt64
    public let resentBytes: UInt64
}

extension SourceSession {
    var view: SessionView {
        SessionView(id: id, peer: peer, encrypted: features.contains(.encryption), connected: isConnected, resumes: resumes,
                           demandRequests: counters.demandRequests.load(ordering: .relaxed),
                           prefetchRequests: counters.prefetchRequests.load(ordering: .relaxed),
                           bytesSent: counters.bytesSent.load(ordering: .relaxed), zeroBytes: counters.zeroBytes.load(ordering: .relaxed),
                           resentBytes: counters.resentBytes.load(ordering: .relaxed))
    }
}

extension SourceServer {
    /// The sessions open now (served, or lingering for a resume), oldest id order not kept.
    public var sessions: [SessionView] { registry.served.map(\.view) }
}
