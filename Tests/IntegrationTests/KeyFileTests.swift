import Glibc
import PagerKernel
import PagerTrust
import Testing

/// Runs the release `pagerd keygen` with `arguments`.
private func keygen(_ arguments: [String]) throws -> (status: Int32, output: String) {
    try runProgram(Binaries.pagerd, ["keygen"] + arguments)
}

/// The key file at `path`, read with the daemons' checks and parsed.
private func ring(_ path: String) throws -> KeyRing { try KeyRing(parsing: readSecretFile(path)) }

private func permissions(_ path: String) -> mode_t {
    var st = stat()
    #expect(lstat(path, &st) == 0)
    return st.st_mode & 0o7777
}

private func hex(_ bytes: [UInt8]) -> String { bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }

@Suite("pagerd keygen writes key files", .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct KeyFileTests {
    @Test("a new file: mode 0600, one 32-byte key named pager, in the format KeyRing (and QEMU) reads; the key is not printed")
    func create() throws {
        let scratch = try TemporaryDirectory(template: "/tmp/pager-keygen-XXXXXX")
        let path = scratch.file("keys.psk")
        let (status, output) = try keygen([path])
        #expect(status == 0, "\(output)")
        #expect(output == "pagerd keygen: wrote \(path): 1 key, identity pager (32 random bytes), mode 0600\n")
        #expect(permissions(path) == 0o600)
        let keys = try ring(path)
        #expect(keys.keys.map(\.identity) == ["pager"])
        #expect(keys.primary.secret.count == 32)
        #expect(!output.contains(hex(keys.primary.secret).prefix(8)))
        // Byte for byte what psktool writes: identity:lowercase-hex, newline.
        let text = String(decoding: try readSecretFile(path), as: UTF8.self)
        #expect(text == "pager:\(hex(keys.primary.secret))\n")
    }

    @Test("--identity names the key; two runs make different keys")
    func identity() throws {
        let scratch = try TemporaryDirectory(template: "/tmp/pager-keygen-XXXXXX")
        let a = scratch.file("a.psk"), b = scratch.file("b.psk")
        #expect(try keygen([a, "--identity", "host-a"]).status == 0)
        #expect(try keygen([b, "--identity", "host-a"]).status == 0)
        #expect(try ring(a).primary.identity == "host-a")
        #expect(try ring(a).primary.secret != ring(b).primary.secret)
    }

    @Test("an identity the format cannot hold is a usage error, and no file is written")
    func badIdentity() throws {
        let scratch = try TemporaryDirectory(template: "/tmp/pager-keygen-XXXXXX")
        let path = scratch.file("keys.psk")
        let (status, output) = try keygen([path, "--identity", "a:b"])
        #expect(status == 64, "\(output)")  // EX_USAGE
        #expect(output.contains("--identity a:b: identity contains ':'"), "\(output)")
        #expect(!isReadableFile(path))
    }

    @Test("keygen never overwrites a key file")
    func neverOverwrites() throws {
        let scratch = try TemporaryDirectory(template: "/tmp/pager-keygen-XXXXXX")
        let path = scratch.file("keys.psk")
        #expect(try keygen([path]).status == 0)
        let before = try readSecretFile(path)
        let (status, output) = try keygen([path])
        #expect(status == 1)
        #expect(output == "pagerd keygen: \(path) exists; keygen never overwrites a key file (--add adds a key to it)\n")
        #expect(try readSecretFile(path) == before)
    }

    @Test("--add puts the new key first and keeps the old ones, in order, with their bytes")
    func addOrdering() throws {
        let scratch = try TemporaryDirectory(template: "/tmp/pager-keygen-XXXXXX")
        let path = scratch.file("keys.psk")
        #expect(try keygen([path]).status == 0)
        let first = try ring(path)

        let (status, output) = try keygen(["--add", path])
        #expect(status == 0, "\(output)")
        #expect(output == "pagerd keygen: added identity pager-2 (32 random bytes) first in \(path), mode 0600; kept after it: pager\n")
        #expect(try keygen(["--add", path, "--identity", "rotated"]).status == 0)

        let rotated = try ring(path)
        #expect(rotated.keys.map(\.identity) == ["rotated", "pager-2", "pager"])
        #expect(rotated.primary.identity == "rotated")  // what a client now sends
        #expect(rotated.key(identity: "pager")?.secret == first.primary.secret)
        #expect(Set(rotated.keys.map { hex($0.secret) }).count == 3)
        #expect(permissions(path) == 0o600)
        let (_, listing) = try runProgram("/bin/ls", ["-A", scratch.path])
        #expect(listing == "keys.psk\n")  // no temporary file left beside it
    }

    @Test("--add refuses an identity already in the file, a missing file and an unsafe one, changing nothing")
    func addRefusals() throws {
        let scratch = try TemporaryDirectory(template: "/tmp/pager-keygen-XXXXXX")
        let path = scratch.file("keys.psk")
        #expect(try keygen([path]).status == 0)
        let before = try readSecretFile(path)

        let duplicate = try keygen(["--add", path, "--identity", "pager"])
        #expect(duplicate.status == 1)
        #expect(duplicate.output == "pagerd keygen: identity pager is already in \(path); give another --identity\n")

        let missing = scratch.file("absent.psk")
        let absent = try keygen(["--add", missing])
        #expect(absent.status == 1)
        #expect(absent.output.hasPrefix("pagerd keygen: key file \(missing): cannot open: "), "\(absent.output)")

        #expect(chmod(path, 0o644) == 0)
        let open = try keygen(["--add", path])
        #expect(open.status == 1)
        #expect(open.output == "pagerd keygen: key file \(path): mode 0644: readable by group or others; chmod 600 \(path)\n")
        #expect(chmod(path, 0o600) == 0)
        #expect(try readSecretFile(path) == before)
    }

    @Test("--add refuses a file that does not parse, naming the line")
    func addToBrokenFile() throws {
        let scratch = try TemporaryDirectory(template: "/tmp/pager-keygen-XXXXXX")
        let path = scratch.file("keys.psk")
        try writeNewSecretFile(path, contents: Array("pager:0011\n".utf8))
        let (status, output) = try keygen(["--add", path])
        #expect(status == 1)
        #expect(output == "pagerd keygen: key file \(path): line 1: key is 2 bytes; at least 32 (64 hex digits) are needed\n")
    }
}
