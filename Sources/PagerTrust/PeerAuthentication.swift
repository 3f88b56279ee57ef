/// How a daemon treats the peer at the other end of the wire: it authenticates it with the
/// keys of a key file (the default, and the only way to serve or accept memory unless the
/// operator says otherwise), or, with the explicit `--insecure-no-auth`, not at all.
public enum PeerAuthentication: Sendable, CustomStringConvertible {
    /// Mutual authentication with a key of this ring: a source accepts any of its keys (old
    /// and new during a rotation), a destination sends the ring's primary key.
    case keys(KeyRing)
    /// No authentication: a source serves its memory to anyone who can connect, a
    /// destination installs pages from anyone who answers.
    case insecureNone

    public var description: String {
        switch self {
        case .keys(let ring): "authenticated (\(ring))"
        case .insecureNone: "NOT authenticated (--insecure-no-auth)"
        }
    }
}
