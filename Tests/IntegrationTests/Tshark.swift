import PagerKernel

/// tshark with the project's dissector (Deploy/wireshark/pager.lua), and tcpdump, for the
/// capture tests. Deploy/setup.sh installs both; a machine without them gets one
/// `apt-get install` attempt (as root) before the tests that need them are skipped.
enum Tshark {
    static let root = "/" + String(#filePath).split(separator: "/").dropLast(3).joined(separator: "/")
    static let dissector = root + "/Deploy/wireshark/pager.lua"
    static let binary = "/usr/bin/tshark"
    static let tcpdump = ["/usr/bin/tcpdump", "/usr/sbin/tcpdump"].first(where: isExecutableFile) ?? "/usr/bin/tcpdump"

    /// Whether both tools are there, after installing them if they were not and we may.
    static let present: Bool = {
        func found() -> Bool { isExecutableFile(binary) && ["/usr/bin/tcpdump", "/usr/sbin/tcpdump"].contains(where: isExecutableFile) }
        if found() { return true }
        if isRootUser, isExecutableFile("/usr/bin/apt-get") {
            // tshark's postinst asks about non-root capture: noninteractive takes the default.
            _ = try? runProgram("/usr/bin/env", ["DEBIAN_FRONTEND=noninteractive", "/usr/bin/apt-get", "install", "-y", "-qq", "tshark", "tcpdump"])
        }
        return found()
    }()
    static let missing = "tshark and tcpdump are not installed and `apt-get install tshark tcpdump` failed (Deploy/setup.sh installs them)"

    /// `tshark -r pcap -T fields -e fields…` with the dissector loaded: one row per packet
    /// that matches `filter`, each field's occurrences joined by ",". Throws on a tshark error
    /// (a Lua error in the dissector among them).
    /// `twoPass`: tshark -2, as Wireshark's GUI does (frames dissected again after the first pass).
    static func fields(_ pcap: String, _ fields: [String], filter: String = "pager", preferences: [String] = [],
                       twoPass: Bool = false) throws -> [[String: String]] {
        var args = (twoPass ? ["-2"] : []) + ["-X", "lua_script:" + dissector, "-r", pcap, "-Y", filter, "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
        for p in preferences { args += ["-o", p] }
        // frame.number first: every row has a tab, which tells rows from tshark's warnings.
        let all = ["frame.number"] + fields
        for f in all { args += ["-e", f] }
        let (status, output) = try runProgram(binary, args)
        // tshark prints a root warning and Lua errors on stderr, which runProgram merges.
        let lines = output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if status != 0 || lines.contains(where: { $0.contains("Lua: Error") || $0.contains("[Expert Info (Error/Undecoded)") }) {
            throw HarnessError("tshark \(args.joined(separator: " ")) exited \(status): \(output.prefix(4000))")
        }
        return lines.filter { $0.first?.isNumber == true && $0.contains("\t") }.map { line in
            let values = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            return Dictionary(uniqueKeysWithValues: zip(all, values + Array(repeating: "", count: max(0, all.count - values.count))))
        }
    }

    /// tshark's text output (one summary line per packet), for failure messages.
    static func summary(_ pcap: String) -> String {
        (try? runProgram(binary, ["-X", "lua_script:" + dissector, "-r", pcap]).output) ?? ""
    }
}
