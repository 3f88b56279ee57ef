@_exported import PagerHarness
import PagerKernel
@_exported import PagerWorkloads
import Testing

/// The release binaries the integration tests run as separate processes.
enum Binaries {
    static let directory: String = {
        if let dir = environmentValue("PAGER_BIN_DIR") { return dir }
        let root = String(#filePath).split(separator: "/").dropLast(3).joined(separator: "/")
        return "/" + root + "/.build/release"
    }()
    static let pagerd = directory + "/pagerd"
    static let workload = directory + "/pager-workload"
    static var present: Bool { isExecutableFile(pagerd) && isExecutableFile(workload) }
    static let missing = "release binaries not built in \(directory): run `swift build -c release` (Deploy/test.sh does)"
}

let isRoot = isRootUser
