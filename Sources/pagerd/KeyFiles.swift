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
/// and exit status 1 (argument-parser would print `Error: ` and the usage instead).
func requireKeyRing(path argument: String) throws -> KeyRing {
    do {
        return try loadKeyRing(path: argument)
    } catch {
        writeStandardError("pagerd: \(error)\n")
        throw ExitCode(1)
    }
}
