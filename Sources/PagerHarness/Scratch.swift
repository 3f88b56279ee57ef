import PagerKernel

/// A scratch directory for logs, sockets and source files (under /dev/shm), removed on
/// deinit unless PAGER_KEEP_SCRATCH is set (to read the daemons' logs afterwards).
public final class Scratch {
    private let directory: TemporaryDirectory
    public var path: String { directory.path }

    public init() {
        // /dev/shm is a tmpfs on every machine these tests run on: failing here is a broken host.
        do { directory = try TemporaryDirectory(template: "/dev/shm/pager-it-XXXXXX") } catch { fatalError("scratch directory: \(error)") }
        if environmentValue("PAGER_KEEP_SCRATCH") != nil {
            directory.keep = true
            writeStandardError("keeping \(directory.path) (PAGER_KEEP_SCRATCH)\n")
        }
    }

    public func file(_ name: String) -> String { directory.file(name) }

    /// `keys.psk` in this directory (the test key, ``TestKeys``), written on first use:
    /// pass it as `--key-file` to every daemon of one test.
    public lazy var keyFile: String = {
        let path = file("keys.psk")
        do { try TestKeys.writeFile(path) } catch { fatalError("cannot write the test key file \(path): \(error)") }
        return path
    }()
}
