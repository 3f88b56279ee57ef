import CPagerKernel
import Glibc
import PagerKernel
import SystemPackage
import Testing

/// A scratch directory and files in it with chosen modes and owners.
private final class Scratch {
    let directory: TemporaryDirectory
    init() throws { directory = try TemporaryDirectory(template: "/tmp/pager-secret-XXXXXX") }

    /// `name` with `contents`, then chmod `mode`.
    func file(_ name: String, mode: mode_t, contents: [UInt8] = Array("pager:00\n".utf8)) throws -> String {
        let path = directory.file(name)
        try writeNewSecretFile(path, contents: contents)
        #expect(chmod(path, mode) == 0)
        return path
    }
}

/// The error reading `path` throws (an issue if it reads).
private func refusal(_ path: String, sourceLocation: SourceLocation = #_sourceLocation) -> SecretFileError? {
    do {
        let bytes = try readSecretFile(path)
        Issue.record("read \(bytes.count) bytes", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

private func permissions(_ path: String) -> mode_t {
    var st = stat()
    #expect(lstat(path, &st) == 0)
    return st.st_mode & 0o7777
}

/// Sets `path`'s access ACL (`system.posix_acl_access`): the owner rw, the given named users
/// with their permissions, the owning group and others nothing, and a mask of `mask`.
/// Returns false where the file system has no ACLs.
private func setACL(_ path: String, users: [(uid: UInt32, perm: UInt16)], mask: UInt16) -> Bool {
    var blob: [UInt8] = [2, 0, 0, 0]
    func entry(_ tag: UInt16, _ perm: UInt16, _ id: UInt32) {
        blob += [UInt8(tag & 0xFF), UInt8(tag >> 8), UInt8(perm & 0xFF), UInt8(perm >> 8),
                 UInt8(id & 0xFF), UInt8(id >> 8 & 0xFF), UInt8(id >> 16 & 0xFF), UInt8(id >> 24)]
    }
    // Entries sorted by tag, then id, as the kernel requires.
    entry(0x01, 0o6, UInt32.max)
    for user in users.sorted(by: { $0.uid < $1.uid }) { entry(0x02, user.perm, user.uid) }
    entry(0x04, 0, UInt32.max)
    entry(0x10, mask, UInt32.max)
    entry(0x20, 0, UInt32.max)
    return blob.withUnsafeBytes { setxattr(path, "system.posix_acl_access", $0.baseAddress, $0.count, 0) } == 0
}

/// Whether /tmp's file system takes access ACLs (ext4 and tmpfs usually do): the ACL tests
/// are skipped, visibly, where it does not.
private let aclsSupported: Bool = {
    guard let scratch = try? Scratch(), let path = try? scratch.file("probe", mode: 0o600) else { return false }
    return setACL(path, users: [(12345, 0o4)], mask: 0o4)
}()

@Suite("Secret files: the checks before a key file is read, and how keygen writes one", .serialized)
struct SecretFileTests {
    @Test("mode 0600 and 0400 are read")
    func ownerOnly() throws {
        let scratch = try Scratch()
        for mode: mode_t in [0o600, 0o400] {
            let path = try scratch.file("keys-\(String(mode, radix: 8)).psk", mode: mode)
            #expect(try readSecretFile(path) == Array("pager:00\n".utf8))
        }
    }

    @Test("group or other bits are refused, with the mode and the chmod that fixes it", arguments: [
        (mode_t(0o644), "readable"), (0o640, "readable"), (0o604, "readable"), (0o620, "writable"),
        (0o660, "readable and writable"), (0o610, "executable"),
    ])
    func groupOrOthers(mode: mode_t, words: String) throws {
        let scratch = try Scratch()
        let path = try scratch.file("keys.psk", mode: mode)
        let error = refusal(path)
        #expect(error?.reason == .accessibleByOthers(mode: UInt32(mode)))
        let octal = "0" + String(mode, radix: 8)
        #expect(error?.description == "\(path): mode \(octal): \(words) by group or others; chmod 600 \(path)")
    }

    @Test("a symbolic link is refused, even to a good file")
    func symbolicLink() throws {
        let scratch = try Scratch()
        let target = try scratch.file("real.psk", mode: 0o600)
        let link = scratch.directory.file("keys.psk")
        #expect(symlink(target, link) == 0)
        let error = refusal(link)
        #expect(error?.reason == .symbolicLink)
        #expect(error?.description == "\(link): is a symbolic link (name the file itself)")
        let dangling = scratch.directory.file("dangling.psk")
        #expect(symlink(scratch.directory.file("nothing"), dangling) == 0)
        #expect(refusal(dangling)?.reason == .symbolicLink)
    }

    @Test("a directory is refused")
    func directory() throws {
        let scratch = try Scratch()
        let error = refusal(scratch.directory.path)
        #expect(error?.reason == .notRegularFile(kind: "a directory"))
        #expect(error?.description == "\(scratch.directory.path): is a directory, not a regular file")
    }

    @Test("a FIFO is refused without waiting for a writer")
    func fifo() throws {
        let scratch = try Scratch()
        let path = scratch.directory.file("keys.psk")
        #expect(mkfifo(path, 0o600) == 0)
        // Without O_NONBLOCK the open itself would block here until a writer came.
        #expect(refusal(path)?.reason == .notRegularFile(kind: "a FIFO"))
    }

    @Test("a missing file names the errno")
    func missing() throws {
        let scratch = try Scratch()
        let path = scratch.directory.file("absent.psk")
        #expect(refusal(path)?.reason == .cannotOpen(.noSuchFileOrDirectory))
    }

    @Test("64 KiB is read; one byte more is refused")
    func sizeLimit() throws {
        let scratch = try Scratch()
        let limit = try scratch.file("limit.psk", mode: 0o600, contents: [UInt8](repeating: 0x41, count: secretFileSizeLimit))
        #expect(try readSecretFile(limit).count == 65536)
        let over = try scratch.file("over.psk", mode: 0o600, contents: [UInt8](repeating: 0x41, count: secretFileSizeLimit + 1))
        let error = refusal(over)
        #expect(error?.reason == .tooLarge(bytes: 65537))
        #expect(error?.description == "\(over): is 65537 bytes; a key file is at most 65536")
    }

    @Test("a file owned by another user is refused (root only: chown)", .enabled(if: isRootUser))
    func otherOwner() throws {
        let scratch = try Scratch()
        let path = try scratch.file("keys.psk", mode: 0o600)
        #expect(chown(path, 12345, 12345) == 0)
        let error = refusal(path)
        #expect(error?.reason == .wrongOwner(uid: 12345, effectiveUID: 0))
    }

    @Test("an ACL that lets another user read is refused; chmod 600 fixes it", .enabled(if: aclsSupported))
    func aclOtherUser() throws {
        let scratch = try Scratch()
        let path = try scratch.file("keys.psk", mode: 0o600)
        let set = setACL(path, users: [(12345, 0o4)], mask: 0o4)
        #expect(set)
        #expect(permissions(path) == 0o640)  // the group bits show the mask
        let error = refusal(path)
        #expect(error?.reason == .aclGrantsAccess(mode: 0o640, grantee: "user 12345"))
        #expect(error?.description == "\(path): mode 0640: its ACL lets user 12345 read or write it; chmod 600 \(path) (or setfacl -b \(path))")
        #expect(chmod(path, 0o600) == 0)  // the mask becomes ---: the entry grants nothing any more
        #expect(try readSecretFile(path).count == 9)
    }

    @Test("systemd's credential shape is read: mode 0400 owned by root, an ACL entry for this user", .enabled(if: aclsSupported))
    func aclThisUser() throws {
        // systemd's write_credential(): fchmod 0400, then fd_add_uid_acl_permission(uid, ACL_READ)
        // when the service's user is not root; `ls -l` shows 0440.
        let scratch = try Scratch()
        let path = try scratch.file("keys.psk", mode: 0o400)
        let set = setACL(path, users: [(geteuid(), 0o4)], mask: 0o4)
        #expect(set)
        #expect(chmod(path, 0o440) == 0)
        #expect(permissions(path) == 0o440)
        #expect(try readSecretFile(path).count == 9)
    }

    @Test("a systemd credentials directory: bare names resolve there, and its 0400 files pass")
    func credentials() throws {
        let scratch = try Scratch()
        let path = try scratch.file("keys.psk", mode: 0o400)
        #expect(chmod(scratch.directory.path, 0o500) == 0)  // read-only, as systemd mounts it
        defer { _ = chmod(scratch.directory.path, 0o700) }
        #expect(setenv("CREDENTIALS_DIRECTORY", scratch.directory.path, 1) == 0)
        defer { unsetenv("CREDENTIALS_DIRECTORY") }
        #expect(credentialPath("keys.psk") == path)
        #expect(try readSecretFile(credentialPath("keys.psk")!).count == 9)
        #expect(credentialPath("absent.psk") == nil)
        #expect(credentialPath("sub/keys.psk") == nil)
        #expect(credentialPath("..") == nil)
        #expect(credentialPath("") == nil)
        unsetenv("CREDENTIALS_DIRECTORY")
        #expect(credentialPath("keys.psk") == nil)
    }

    @Test("writeNewSecretFile creates mode 0600 whatever the umask", arguments: [mode_t(0), 0o022, 0o277])
    func createdMode(mask: mode_t) throws {
        let scratch = try Scratch()
        let path = scratch.directory.file("keys.psk")
        let old = umask(mask)
        defer { umask(old) }
        try writeNewSecretFile(path, contents: Array("x".utf8))
        #expect(permissions(path) == 0o600)
    }

    @Test("writeNewSecretFile refuses an existing file and a symbolic link, and leaves them alone")
    func neverOverwrites() throws {
        let scratch = try Scratch()
        let path = try scratch.file("keys.psk", mode: 0o600, contents: Array("old\n".utf8))
        #expect(throws: SecretFileError(path: path, reason: .exists)) { try writeNewSecretFile(path, contents: Array("new\n".utf8)) }
        #expect(try readSecretFile(path) == Array("old\n".utf8))
        let link = scratch.directory.file("link.psk")
        let target = scratch.directory.file("target.psk")
        #expect(symlink(target, link) == 0)
        #expect(throws: SecretFileError(path: link, reason: .exists)) { try writeNewSecretFile(link, contents: Array("new\n".utf8)) }
        #expect(refusal(target)?.reason == .cannotOpen(.noSuchFileOrDirectory))  // nothing created through the link
    }

    @Test("replaceSecretFile swaps the contents in whole, mode 0600, no file left beside it")
    func replace() throws {
        let scratch = try Scratch()
        let path = try scratch.file("keys.psk", mode: 0o400, contents: Array("old\n".utf8))
        try replaceSecretFile(path, contents: Array("new\nold\n".utf8))
        #expect(try readSecretFile(path) == Array("new\nold\n".utf8))
        #expect(permissions(path) == 0o600)
        let (_, listing) = try runProgram("/bin/ls", ["-A", scratch.directory.path])
        #expect(listing == "keys.psk\n")
    }

    @Test("replaceSecretFile keeps the owner of the file it replaces (root only: chown)", .enabled(if: isRootUser))
    func replaceKeepsOwner() throws {
        let scratch = try Scratch()
        let path = try scratch.file("keys.psk", mode: 0o600)
        #expect(chown(path, 12345, 23456) == 0)
        try replaceSecretFile(path, contents: Array("new\n".utf8))
        var st = stat()
        #expect(stat(path, &st) == 0)
        #expect(st.st_uid == 12345 && st.st_gid == 23456)
    }

    @Test("secureRandomBytes returns the count asked for, more than getrandom gives at once, and differs each time")
    func randomBytes() {
        #expect(secureRandomBytes(0).isEmpty)
        let a = secureRandomBytes(32), b = secureRandomBytes(32)
        #expect(a.count == 32 && b.count == 32 && a != b)
        let large = secureRandomBytes(100_000)
        #expect(large.count == 100_000)
        #expect(Set(large).count == 256)  // all byte values: not a buffer left zero
    }
}
