import ArgumentParser
import PagerKernel
import PagerTrust

// Where the daemons' --key-file comes from: PagerKernel reads the file (with its checks),
// PagerTrust parses it. They meet here because PagerTrust depends on no kernel code.

/// Why a key file was not loaded; reads `key file PATH: reason`.
enum KeyFileLoadError: Error, CustomStringConvertible {
    /// The file itself: missing, a symbolic link, readable by others, too large, ...
    case file(SecretFileError)
    /// Its contents (``KeyFileError/path`` set).
    case format(KeyFileError)

    var description: String {
        switch self {
        case .file(let e): "key file \(e)"
        case .format(let e): e.description
        }
    }
}

/// The file a `--key-file` argument names: a bare name (no '/') that systemd loaded into
/// `$CREDENTIALS_DIRECTORY` (`LoadCredential=NAME:/etc/pager/keys.psk`) is read there;
/// anything else is a path.
func keyFilePath(_ argument: String) -> String { credentialPath(argument) ?? argument }

/// The key ring named by a `--key-file` argument (see ``keyFilePath(_:)``).
func loadKeyRing(path argument: String) throws(KeyFileLoadError) -> KeyRing {
    try readKeyRing(atPath: keyFilePath(argument))
}

/// The key ring in the file at `path`, taken literally (keygen writes there).
func readKeyRing(atPath path: String) throws(KeyFileLoadError) -> KeyRing {
    let bytes: [UInt8]
    do { bytes = try readSecretFile(path) } catch { throw .file(error) }
    do {
        return try KeyRing(parsing: bytes)
    } catch {
        var located = error
        located.path = path
        throw .format(located)
    }
}

/// For a daemon's `run()`: the ring, or `pagerd: key file PATH: reason` on standard error
/// and exit status 77 (EX_NOPERM: a file others may read, a link, someone else's file, no
/// permission to open it) or 78 (EX_CONFIG: missing, not a key file, too large); argument-
/// parser would print `Error: ` and the usage instead.
func requireKeyRing(path argument: String) throws -> KeyRing {
    do {
        return try loadKeyRing(path: argument)
    } catch {
        writeStandardError("pagerd: \(error)\n")
        throw ExitCode(error.exitStatus)
    }
}

extension KeyFileLoadError {
    var exitStatus: Int32 {
        guard case .file(let e) = self else { return ExitStatus.configuration }
        switch e.reason {
        case .accessibleByOthers, .aclGrantsAccess, .wrongOwner, .symbolicLink: return ExitStatus.noPermission
        case .cannotOpen(let errno) where errno == .permissionDenied || errno == .notPermitted: return ExitStatus.noPermission
        default: return ExitStatus.configuration
        }
    }
}

/// `--key-file` and `--insecure-no-auth`, the same on every daemon: exactly one of them.
/// Secure by default: a daemon given neither refuses to start rather than serve (or accept)
/// memory unauthenticated.
struct AuthenticationOptions: ParsableArguments {
    @Option(help: ArgumentHelp("""
        The pre-shared keys, in QEMU's keys.psk format (lines of identity:hex, made by \
        `pagerd keygen PATH`; owner-only permissions). A bare name is read from \
        $CREDENTIALS_DIRECTORY (systemd's LoadCredential=). Both hosts need the same key; a \
        source accepts any key of its file, a destination uses the first.
        """, valueName: "path"))
    var keyFile: String?

    @Flag(help: ArgumentHelp("""
        Encrypt every frame after the handshake (AES-256-GCM, keys per connection and \
        direction). A destination with --encrypt asks for it and accepts only a source that \
        encrypts; a source with --encrypt refuses destinations that do not ask (a source with \
        a key encrypts whenever a destination asks, without the flag). Needs --key-file.
        """))
    var encrypt = false

    @Flag(help: "Run without authentication: a source then serves its memory to anyone who can connect, a destination installs pages from anyone who answers. For isolated test networks only.")
    var insecureNoAuth = false

    func validate() throws {
        if keyFile != nil && insecureNoAuth { throw ValidationError("give --key-file or --insecure-no-auth, not both") }
        if encrypt && keyFile == nil { throw ValidationError("--encrypt needs --key-file: the keys that encrypt come from the handshake's authentication") }
        if keyFile == nil && !insecureNoAuth {
            throw ValidationError("no key: give --key-file PATH (make one with `pagerd keygen PATH` and copy it to both hosts), or --insecure-no-auth to run without authentication")
        }
    }

    /// The daemon's authentication: the loaded ring, or none with a warning on standard error
    /// saying what the insecure mode exposes. Nil for a source: its server logs the warning
    /// itself, with the address anyone can read the memory from.
    func resolve(insecureMeans consequence: String?) throws -> PeerAuthentication {
        guard let keyFile else {
            if let consequence { writeStandardError("pagerd: WARNING: --insecure-no-auth: this daemon \(consequence)\n") }
            return .insecureNone
        }
        return .keys(try requireKeyRing(path: keyFile))
    }
}

/// What `--insecure-no-auth` exposes, in the warning a destination daemon prints (a source's
/// server logs its own).
enum InsecureConsequence {
    static let destination = "installs pages from any peer that answers, unauthenticated"
}
