import Glibc
import PagerKernel
import Testing

@Suite("Listening on a Unix socket path")
struct UnixSocketListenTests {
    func path(_ name: String) -> String { "/tmp/pager-listen-\(processID())-\(name)" }

    @Test("a stale socket is replaced; a live one, a regular file or a symbolic link is refused and left as it was; the new socket has the mode asked for")
    func replacesOnlyStaleSockets() throws {
        let stale = path("stale.sock")
        defer { removeFile(stale) }
        try UnixSocket.listen(path: stale).close() // closed: nobody listens there any more
        let fresh = try UnixSocket.listen(path: stale, group: nil)
        defer { try? fresh.close() }
        var st = stat()
        #expect(lstat(stale, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK && st.st_mode & 0o777 == 0o660)
        // Live: `fresh` listens there.
        #expect(throws: KernelError.self) { try UnixSocket.listen(path: stale) }
        #expect(lstat(stale, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK)

        let file = path("file")
        defer { removeFile(file) }
        try writeWholeFile(file, "keep me\n")
        #expect(throws: KernelError.self) { try UnixSocket.listen(path: file) }
        #expect(try readWholeFile(file) == "keep me\n")

        let link = path("link")
        defer { removeFile(link) }
        #expect(symlink(file, link) == 0)
        #expect(throws: KernelError.self) { try UnixSocket.listen(path: link, group: nil) }
        let kept = try readWholeFile(file)
        #expect(lstat(link, &st) == 0 && st.st_mode & S_IFMT == S_IFLNK && kept == "keep me\n")
    }
}
