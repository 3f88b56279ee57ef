import CPagerKernel
import Glibc
import SystemPackage

// Files that hold secrets (the key file): read only if nobody but this user and root can
// have written or read them, created so that nobody else ever can, and random bytes to put
// in them. Every check is made on the open descriptor (fstat, fgetxattr), never on the
// path again, so the file checked is the file read.

/// The largest secret file read: 64 KiB holds some 500 keys with 64-byte identities, far more
/// than a ring ever needs, and bounds what a wrong path (a log, a disk image) costs.
public let secretFileSizeLimit = 64 * 1024

/// Why a secret file was refused or could not be written.
public struct SecretFileError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Reason: Sendable, Equatable {
        /// `open` failed (missing file, no permission on a directory on the way, ...).
        case cannotOpen(Errno)
        /// The last component is a symbolic link (refused by `O_NOFOLLOW`).
        case symbolicLink
        /// A directory, FIFO, socket or device, named as in "is a directory".
        case notRegularFile(kind: String)
        /// Group or other permission bits are set (and no ACL explains them away); `mode` is the
        /// permission bits (`st_mode & 0o7777`).
        case accessibleByOthers(mode: UInt32)
        /// The access ACL lets someone else read or write it: `grantee` as in "user 1001".
        case aclGrantsAccess(mode: UInt32, grantee: String)
        /// Owned by someone other than this process's effective user and root.
        case wrongOwner(uid: UInt32, effectiveUID: UInt32)
        /// Larger than ``secretFileSizeLimit``.
        case tooLarge(bytes: Int)
        /// A system call on the open file failed (`read`, `fstat`, `write`, `fsync`, `rename`, ...).
        case failed(operation: String, Errno)
        /// The file to create exists already (`O_EXCL`).
        case exists
    }

    /// The file.
    public var path: String
    public var reason: Reason

    public init(path: String, reason: Reason) {
        self.path = path
        self.reason = reason
    }

    /// `PATH: reason`, with the command that fixes it where there is one.
    public var description: String { "\(path): \(explanation)" }

    /// The reason alone.
    public var explanation: String {
        switch reason {
        case .cannotOpen(let e): "cannot open: \(e)"
        case .symbolicLink: "is a symbolic link (name the file itself)"
        case .notRegularFile(let kind): "is \(kind), not a regular file"
        case .accessibleByOthers(let mode):
            "mode \(octal(mode)): \(permissionWords(mode)) by group or others; chmod 600 \(path)"
        case .aclGrantsAccess(let mode, let grantee):
            "mode \(octal(mode)): its ACL lets \(grantee) read or write it; chmod 600 \(path) (or setfacl -b \(path))"
        case .wrongOwner(let uid, let euid):
            "owned by uid \(uid), neither this user (uid \(euid)) nor root; chown it to the user that reads it"
        case .tooLarge(let bytes): "is \(bytes) bytes; a key file is at most \(secretFileSizeLimit)"
        case .failed(let operation, let e): "\(operation) failed: \(e)"
        case .exists: "exists"
        }
    }
}

/// A mode as `ls` and `chmod` spell it: four octal digits.
private func octal(_ mode: UInt32) -> String {
    let digits = String(mode & 0o7777, radix: 8)
    return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
}

/// "readable", "readable and writable", ... for the group and other bits of `mode`.
private func permissionWords(_ mode: UInt32) -> String {
    var words: [String] = []
    if mode & 0o044 != 0 { words.append("readable") }
    if mode & 0o022 != 0 { words.append("writable") }
    if mode & 0o011 != 0 { words.append("executable") }
    return words.joined(separator: " and ")
}

// MARK: - Reading

/// Reads a secret file after checking, on the open descriptor, that it is a regular file
/// (not a symbolic link: `O_NOFOLLOW`), that nobody but its owner may read or write it
/// (mode & 0o077 == 0, or an access ACL that grants only this user), that it belongs to this
/// process's effective user or to root, and that it is at most ``secretFileSizeLimit`` bytes.
///
/// systemd's credentials (`LoadCredential=`) pass: systemd writes them mode 0400 owned by
/// root with an ACL entry that lets the service's user read (so `ls` shows 0440), or, on a
/// file system without ACLs, owned by that user. The corresponding C functions are `open`,
/// `fstat`, `fgetxattr` and `read`.
public func readSecretFile(_ path: String) throws(SecretFileError) -> [UInt8] {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It does not
    // change reads from a regular file, the only kind read (checked before the first read).
    // O_NOCTTY: a terminal named by mistake must not become the controlling terminal.
    let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
    if fd < 0 { throw SecretFileError(path: path, reason: openFailure(path, Errno(rawValue: Glibc.errno))) }
    defer { close(fd) }
    var st = stat()
    if fstat(fd, &st) != 0 { throw SecretFileError(path: path, reason: .failed(operation: "fstat", Errno(rawValue: Glibc.errno))) }
    if let reason = secretFileProblem(fd, st) { throw SecretFileError(path: path, reason: reason) }
    return try readAll(fd, path: path)
}

/// What is wrong with the open file `fd` whose status is `st`, or nil.
private func secretFileProblem(_ fd: Int32, _ st: stat) -> SecretFileError.Reason? {
    if st.st_mode & S_IFMT != S_IFREG { return .notRegularFile(kind: fileKind(st.st_mode)) }
    if st.st_mode & 0o077 != 0 {
        // With an access ACL the group bits show the ACL's mask, not the group's permission:
        // decide on the entries themselves.
        switch aclGrantee(fd, group: st.st_gid) {
        case .noACL: return .accessibleByOthers(mode: st.st_mode & 0o7777)
        case .grants(let who): return .aclGrantsAccess(mode: st.st_mode & 0o7777, grantee: who)
        case .onlyThisUser: break
        }
    }
    let euid = geteuid()
    if st.st_uid != euid && st.st_uid != 0 { return .wrongOwner(uid: st.st_uid, effectiveUID: euid) }
    if st.st_size > secretFileSizeLimit { return .tooLarge(bytes: Int(st.st_size)) }
    return nil
}

/// Reads `fd` to its end, refusing more than ``secretFileSizeLimit`` bytes (the file may
/// have grown since fstat).
private func readAll(_ fd: Int32, path: String) throws(SecretFileError) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: secretFileSizeLimit + 1)
    var total = 0
    while total < bytes.count {
        let result = retryingInterrupts {
            bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + total, $0.count - total) }
        }
        switch result {
        case .success(0): bytes.removeSubrange(total...); return bytes
        case .success(let n): total += n
        case .failure(let e): throw SecretFileError(path: path, reason: .failed(operation: "read", e))
        }
    }
    throw SecretFileError(path: path, reason: .tooLarge(bytes: total))
}

/// Why `open` failed on `path`, told by what is there (`lstat`): `O_NOFOLLOW` on a symbolic
/// link gives ELOOP, and a socket gives ENXIO, neither of which names the problem.
private func openFailure(_ path: String, _ errno: Errno) -> SecretFileError.Reason {
    var st = stat()
    guard lstat(path, &st) == 0 else { return .cannotOpen(errno) }
    switch st.st_mode & S_IFMT {
    case S_IFLNK: return .symbolicLink
    case S_IFREG: return .cannotOpen(errno)
    default: return .notRegularFile(kind: fileKind(st.st_mode))
    }
}

/// "a directory", "a FIFO", ... as in "is a directory, not a regular file".
private func fileKind(_ mode: mode_t) -> String {
    switch mode & S_IFMT {
    case S_IFDIR: "a directory"
    case S_IFIFO: "a FIFO"
    case S_IFSOCK: "a socket"
    case S_IFCHR: "a character device"
    case S_IFBLK: "a block device"
    case S_IFLNK: "a symbolic link"
    default: "of unknown type \(octal((mode & S_IFMT) >> 12))"
    }
}

// MARK: - The access ACL

/// Who besides this user an access ACL lets at a file.
private enum ACLVerdict {
    /// No ACL (none set, or a file system without them): the mode bits mean what they say.
    case noACL
    /// Only the owner and named entries for this process's effective user grant anything.
    case onlyThisUser
    /// Someone else may read, write or execute: "user 1001", "group 4 (the file's group)", "others".
    case grants(String)
}

/// Reads and judges `fd`'s access ACL (the `system.posix_acl_access` attribute). The
/// attribute is a 4-byte version (2) and then 8-byte entries: tag (u16), permissions (u16),
/// id (u32), little-endian (linux/posix_acl_xattr.h). Named users, named groups and the
/// owning group are limited by the mask entry. The corresponding C function is `fgetxattr`.
private func aclGrantee(_ fd: Int32, group: gid_t) -> ACLVerdict {
    var buffer = [UInt8](repeating: 0, count: 4096)  // 511 entries; the kernel allows 32 on most file systems
    let n = buffer.withUnsafeMutableBytes { fgetxattr(fd, "system.posix_acl_access", $0.baseAddress, $0.count) }
    // ENODATA: no ACL; EOPNOTSUPP: none possible here. ERANGE (larger than the buffer) or a
    // malformed attribute: judge by the mode bits, which then refuse the file.
    guard n >= 4, (n - 4) % 8 == 0 else { return .noACL }
    func u16(_ at: Int) -> UInt32 { UInt32(buffer[at]) | UInt32(buffer[at + 1]) << 8 }
    func u32(_ at: Int) -> UInt32 { u16(at) | u16(at + 2) << 16 }
    guard u32(0) == 2 else { return .noACL }
    let entries = (0..<(n - 4) / 8).map { i in (tag: u16(4 + 8 * i), perm: u16(6 + 8 * i) & 0o7, id: u32(8 + 8 * i)) }
    let userObj: UInt32 = 0x01, user: UInt32 = 0x02, groupObj: UInt32 = 0x04, namedGroup: UInt32 = 0x08
    let maskTag: UInt32 = 0x10, other: UInt32 = 0x20
    let mask = entries.first { $0.tag == maskTag }?.perm ?? 0o7
    let euid = geteuid()
    for e in entries {
        switch e.tag {
        case userObj, maskTag: continue
        case user where e.id == euid: continue
        case user where e.perm & mask != 0: return .grants("user \(e.id)")
        case groupObj where e.perm & mask != 0: return .grants("group \(group) (the file's group)")
        case namedGroup where e.perm & mask != 0: return .grants("group \(e.id)")
        case other where e.perm != 0: return .grants("others")
        default: continue
        }
    }
    return .onlyThisUser
}

// MARK: - systemd credentials

/// The path of credential `name` in `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`),
/// or nil if the variable is unset, `name` is not a bare file name, or nothing is there.
/// A symbolic link there counts as present (and ``readSecretFile(_:)`` then refuses it)
/// rather than letting the caller fall back to a file of the same name elsewhere.
/// The corresponding C function is `lstat`.
public func credentialPath(_ name: String) -> String? {
    guard !name.isEmpty, !name.contains("/"), name != ".", name != "..",
          let directory = environmentValue("CREDENTIALS_DIRECTORY"), !directory.isEmpty else { return nil }
    let path = (directory.hasSuffix("/") ? directory : directory + "/") + name
    var st = stat()
    return lstat(path, &st) == 0 ? path : nil
}

// MARK: - Writing

/// Creates `path` with `contents`, mode 0600: never over an existing file or through a
/// symbolic link (`O_CREAT|O_EXCL|O_NOFOLLOW`: ``SecretFileError/Reason/exists``), mode set
/// with `fchmod` after `open` so that no umask changes it, flushed to disk (`fsync` of the
/// file and of its directory) before it returns. A file it created and could not finish is
/// removed. The corresponding C functions are `open`, `fchmod`, `write` and `fsync`.
public func writeNewSecretFile(_ path: String, contents: [UInt8]) throws(SecretFileError) {
    try createSecretFile(path, contents: contents, owner: nil)
    try syncDirectory(containing: path)
}

/// Replaces the secret file `path` with a new one holding `contents` (for adding a key to a
/// ring): the new file is written beside it under a random name (same directory, so same file
/// system) with ``writeNewSecretFile(_:contents:)``'s care, then renamed over it, so a reader
/// sees the old file or the new one, never half of one. When run as root, the new file keeps
/// the old one's owner and group (a key file root edits for a service user stays readable by
/// that user). Two concurrent replacements both succeed and the later rename wins.
/// The corresponding C functions are `lstat`, `fchown` and `rename`.
public func replaceSecretFile(_ path: String, contents: [UInt8]) throws(SecretFileError) {
    var st = stat()
    if lstat(path, &st) != 0 { throw SecretFileError(path: path, reason: .cannotOpen(Errno(rawValue: Glibc.errno))) }
    if st.st_mode & S_IFMT != S_IFREG {
        throw SecretFileError(path: path, reason: st.st_mode & S_IFMT == S_IFLNK ? .symbolicLink : .notRegularFile(kind: fileKind(st.st_mode)))
    }
    let owner = geteuid() == 0 && (st.st_uid != 0 || st.st_gid != getegid()) ? (st.st_uid, st.st_gid) : nil
    let suffix = secureRandomBytes(6).map { String($0, radix: 16) }.map { $0.count == 1 ? "0" + $0 : $0 }.joined()
    let temporary = "\(path).new-\(suffix)"
    try createSecretFile(temporary, contents: contents, owner: owner)
    if rename(temporary, path) != 0 {
        let e = Errno(rawValue: Glibc.errno)
        _ = unlink(temporary)
        throw SecretFileError(path: path, reason: .failed(operation: "rename", e))
    }
    try syncDirectory(containing: path)
}

/// `open(O_CREAT|O_EXCL)`, `fchown` to `owner` if given, `fchmod 0600`, `write`, `fsync`,
/// `close`; removes the file again if any step after `open` fails.
private func createSecretFile(_ path: String, contents: [UInt8], owner: (uid_t, gid_t)?) throws(SecretFileError) {
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0o600)
    if fd < 0 {
        let e = Errno(rawValue: Glibc.errno)
        throw SecretFileError(path: path, reason: e == .fileExists ? .exists : .failed(operation: "open", e))
    }
    func fail(_ operation: String, _ e: Errno) -> SecretFileError {
        close(fd)
        _ = unlink(path)
        return SecretFileError(path: path, reason: .failed(operation: operation, e))
    }
    if let (uid, gid) = owner, fchown(fd, uid, gid) != 0 { throw fail("fchown", Errno(rawValue: Glibc.errno)) }
    if fchmod(fd, 0o600) != 0 { throw fail("fchmod", Errno(rawValue: Glibc.errno)) }
    var written = 0
    while written < contents.count {
        let result = retryingInterrupts {
            contents.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
        }
        switch result {
        case .success(let n): written += n
        case .failure(let e): throw fail("write", e)
        }
    }
    if fsync(fd) != 0 { throw fail("fsync", Errno(rawValue: Glibc.errno)) }
    if close(fd) != 0 {
        let e = Errno(rawValue: Glibc.errno)
        _ = unlink(path)
        throw SecretFileError(path: path, reason: .failed(operation: "close", e))
    }
}

/// `fsync` on the directory holding `path`, so that its new entry survives a crash.
private func syncDirectory(containing path: String) throws(SecretFileError) {
    let directory: String
    if let slash = path.lastIndex(of: "/") {
        directory = slash == path.startIndex ? "/" : String(path[..<slash])
    } else {
        directory = "."
    }
    let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if fd < 0 { throw SecretFileError(path: directory, reason: .failed(operation: "open", Errno(rawValue: Glibc.errno))) }
    defer { close(fd) }
    if fsync(fd) != 0 { throw SecretFileError(path: directory, reason: .failed(operation: "fsync", Errno(rawValue: Glibc.errno))) }
}

// MARK: - Randomness

/// `n` bytes from the kernel's random number generator (`getrandom(2)`, flags 0: blocks only
/// until the pool is first initialized, early at boot). Stops the process if the kernel
/// refuses: there is no safe fallback for key material. The corresponding C function is `getrandom`.
public func secureRandomBytes(_ n: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: n)
    var filled = 0
    while filled < n {
        // Requests above 256 bytes may return fewer bytes; loop until all are there.
        let result = retryingInterrupts {
            bytes.withUnsafeMutableBytes { getrandom($0.baseAddress! + filled, $0.count - filled, 0) }
        }
        switch result {
        case .success(let got): filled += got
        case .failure(let e): fatalError("getrandom failed: \(e) [errno \(e.rawValue)]")
        }
    }
    return bytes
}
