/// The replay tool a fuzz target builds into without `-DFUZZING`: runs `exercise` on the
/// bytes of every file named on the command line (a finding replays under a debugger), then
/// exits. The same for every fuzz target of the package.
public func replayFuzzInputs(tool: String, _ exercise: ([UInt8]) -> Void) -> Never {
    let paths = CommandLine.arguments.dropFirst()
    if paths.isEmpty {
        print("usage: \(tool) FILE... (replays inputs; build with -DFUZZING and --sanitize fuzzer to fuzz)")
        exitProcess(2)
    }
    for path in paths {
        guard let bytes = try? readFileBytes(path) else { print("cannot open \(path)"); exitProcess(1) }
        exercise(bytes)
        print("\(path): ok (\(bytes.count) bytes)")
    }
    exitProcess(0)
}
