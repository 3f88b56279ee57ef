import ArgumentParser
import PagerKernel
import PagerTrust

/// `pagerd keygen PATH [--identity NAME] [--add]`: a new random key in a key file.
struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Write a new random pre-shared key to a key file (QEMU's keys.psk format).",
        discussion: """
        Creates PATH holding one new key of 32 random bytes (getrandom) under the identity \
        given by --identity (default pager), as one identity:hexkey line. The file is created \
        mode 0600 and never overwritten: keygen refuses a PATH that exists. It prints the \
        path, the identity and the mode, never the key. Copy the file to the other host over \
        a secure channel and keep it mode 0600, owned by the user the daemon runs as (or root).

        The daemons read the file given to --key-file and refuse it unless it is a regular \
        file (not a symbolic link) that nobody but its owner may read or write, owned by the \
        daemon's user or by root, and at most 64 KiB. A bare name (no '/') is read from \
        $CREDENTIALS_DIRECTORY when systemd put it there, e.g. with
          LoadCredential=keys.psk:/etc/pager/keys.psk
        and --key-file keys.psk. The destination sends the first key of its file; the source \
        accepts any key in its file.

        Rotation: keygen --add PATH puts a new key first and keeps the keys already there \
        after it (its identity: --identity, or the first free one of pager-2, pager-3, ...). \
        Install the new file on the sources first (they then accept the old key and the new \
        one), then on the destinations (which then send the new one). The daemons read the \
        file when they start: restart them to use it. Once no daemon runs with the old key, \
        delete its line from every copy.

        QEMU: the same file serves QEMU's TLS-PSK migration when it is named keys.psk in the \
        directory given to tls-creds-psk as dir=, e.g.
          -object tls-creds-psk,id=tls0,dir=/etc/pager,endpoint=client,username=pager
        QEMU's client sends the key of its username= (default qemu); its server accepts any \
        identity in the file.
        """
    )

    @Argument(help: "The key file to create (with --add: the key file to add a key to).") var path: String
    @Option(help: "The new key's identity (default pager; with --add, the first free one of pager-2, pager-3, ...).") var identity: String?
    @Flag(help: "Add a new key, first, to the existing key file PATH; the keys already there are kept after it.") var add = false

    /// 32 bytes: the HMAC-SHA256 key size, KeyRing's minimum.
    static let keyBytes = KeyRing.minimumKeyBytes

    func validate() throws {
        // The same rules as a line of the file; the secret is a stand-in of the right length.
        if let identity {
            do { _ = try PresharedKey(identity: identity, secret: [UInt8](repeating: 0, count: Self.keyBytes)) } catch {
                throw ValidationError("--identity \(identity): \(error.reason)")
            }
        }
    }

    func run() throws {
        if add { try addKey() } else { try createFile() }
    }

    private func createFile() throws {
        let key = newKey(identity ?? "pager")
        do {
            try writeNewSecretFile(path, contents: KeyRing.formatted([key]))
        } catch {
            fail(error.reason == .exists ? "\(path) exists; keygen never overwrites a key file (--add adds a key to it)" : "key file \(error)")
        }
        print("pagerd keygen: wrote \(path): 1 key, identity \(key.identity) (\(Self.keyBytes) random bytes), mode 0600")
    }

    private func addKey() throws {
        let ring: KeyRing
        do { ring = try readKeyRing(atPath: path) } catch { fail("\(error)") }
        let name = identity ?? Self.firstFreeIdentity(in: ring)
        if ring.key(identity: name) != nil { fail("identity \(name) is already in \(path); give another --identity") }
        let key = newKey(name)
        do {
            // New key first: clients send the first key, servers accept all of them.
            let rotated = try KeyRing(keys: [key] + ring.keys)
            try replaceSecretFile(path, contents: KeyRing.formatted(rotated.keys))
        } catch let error as SecretFileError {
            fail("key file \(error)")
        }
        let kept = ring.keys.map(\.identity).joined(separator: ", ")
        print("pagerd keygen: added identity \(name) (\(Self.keyBytes) random bytes) first in \(path), mode 0600; kept after it: \(kept)")
    }

    /// A new random key (`validate()` has checked a given identity; the defaults are valid).
    private func newKey(_ identity: String) -> PresharedKey {
        do { return try PresharedKey(identity: identity, secret: secureRandomBytes(Self.keyBytes)) } catch {
            fail("--identity \(identity): \(error.reason)")
        }
    }

    /// `pager-2`, `pager-3`, ...: the first not in `ring`.
    static func firstFreeIdentity(in ring: KeyRing) -> String {
        var n = 2
        while ring.key(identity: "pager-\(n)") != nil { n += 1 }
        return "pager-\(n)"
    }

    private func fail(_ message: String) -> Never {
        writeStandardError("pagerd keygen: \(message)\n")
        Self.exit(withError: ExitCode(1))
    }
}
