import PagerKernel

// Running the pager's programs as children and reading what they print.

/// Runs a command to completion and requires success.
@discardableResult
public func sh(_ path: String, _ args: String...) throws -> String {
    let (status, output) = try runProgram(path, args)
    guard status == 0 else { throw HarnessError("\(path) \(args.joined(separator: " ")) exited \(status): \(output)") }
    return output
}

public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// Waits until `process` prints `text` (polling its log every 5 ms) for the `occurrence`th
/// time, or fails after `seconds`. With `afterExit`, its log is still watched once it has
/// exited (for what a process it started, such as pagerd's guardian, writes there).
public func waitFor(_ process: ChildProcess, toPrint text: String, seconds: Double = 10, occurrence: Int = 1, afterExit: Bool = false) throws {
    let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
    while monotonicNanoseconds() < deadline {
        if occurrences(of: text, in: process.output) >= occurrence { return }
        if let status = process.wait(timeoutMilliseconds: 5) {
            guard afterExit else { throw HarnessError("process exited \(status) before printing \"\(text)\": \(process.output)") }
            sleepMilliseconds(5)
        }
    }
    throw HarnessError("no \"\(text)\" after \(seconds) s: \(process.output)")
}

/// How many times `text` occurs in `output` (not overlapping).
public func occurrences(of text: String, in output: String) -> Int {
    output.ranges(of: text).count
}

/// Parses `key=value` pairs (numbers) out of a program's output.
public func keyValues(_ text: String) -> [String: Double] {
    var result: [String: Double] = [:]
    for token in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
        let kv = token.split(separator: "=", maxSplits: 1)
        if kv.count == 2, let v = Double(kv[1]) { result[String(kv[0])] = v }
    }
    return result
}

/// The integers on the first line of `output` that starts (after indentation) with `prefix`,
/// in order: e.g. `pages installed   229376 with data, 32768 zero, ...` gives [229376, 32768, ...].
/// Empty when no line starts so.
public func numbers(after prefix: String, in output: String) -> [Int] {
    guard let line = output.split(separator: "\n").map({ $0.drop { $0 == " " } }).first(where: { $0.hasPrefix(prefix) }) else { return [] }
    return line.dropFirst(prefix.count).split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
}
