import PagerKernel
import PagerTrust

/// The key the tests and benchmarks run the daemons with: the daemons are secure by default,
/// so every migration a test or `pager-bench` runs is authenticated, as a user's would be.
/// One fixed key (the tests' processes share it through a key file written per run) is
/// enough: what is tested is the handshake, not the key's secrecy.
public enum TestKeys {
    public static let identity = "pager-test"
    public static let key: PresharedKey = {
        do { return try PresharedKey(identity: identity, secret: (0..<32).map { UInt8(0x40 + $0) }) } catch {
            fatalError("the test key is invalid: \(error)")
        }
    }()
    public static let ring: KeyRing = {
        do { return try KeyRing(keys: [key]) } catch { fatalError("the test key ring is invalid: \(error)") }
    }()
    /// For in-process servers and clients.
    public static var authentication: PeerAuthentication { .keys(ring) }

    /// Writes the key to a new file at `path` (mode 0600, as `pagerd keygen` would) and
    /// returns the path, for a daemon's `--key-file`.
    @discardableResult
    public static func writeFile(_ path: String) throws -> String {
        try writeNewSecretFile(path, contents: KeyRing.formatted([key]))
        return path
    }
}
