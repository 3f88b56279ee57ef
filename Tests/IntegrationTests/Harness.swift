import Glibc
@_exported import PagerBenchKit
import PagerKernel
import Testing

/// The release binaries the integration tests run as separate processes.
enum Binaries {
    static let directory: String = {
        if let dir = getenv("PAGER_BIN_DIR") { return String(cString: dir) }
        let root = String(#filePath).split(separator: "/").dropLast(3).joined(separator: "/")
        return "/" + root + "/.build/release"
    }()
    static let pagerd = directory + "/pagerd"
    static let workload = directory + "/pager-workload"
    static var present: Bool { access(pagerd, X_OK) == 0 && access(workload, X_OK) == 0 }
    static let missing = "release binaries not built in \(directory): run `swift build -c release` (Deploy/test.sh does)"
}

let isRoot = getuid() == 0

