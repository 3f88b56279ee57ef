/// Splits the newline-delimited hint stream into lines, however the stream arrived in reads:
/// the same bytes give the same lines whether they came in one read or one byte at a time.
/// A line longer than `maxLine` is reported once as ``Line/tooLong`` and skipped up to its
/// newline, so memory stays bounded and the line's tail is not mistaken for a new line.
/// Empty lines are skipped.
public struct LineSplitter: Sendable {
    public enum Line: Equatable, Sendable {
        /// A complete line, without its newline.
        case text([UInt8])
        /// A line that passed `maxLine` bytes; its bytes were dropped.
        case tooLong
    }

    /// Where the splitter is in the current line.
    private enum State: Sendable {
        /// Collecting a line that fits so far.
        case collecting
        /// Inside a line already reported too long: dropping bytes until its newline.
        case discarding
    }

    /// The longest line kept: 64 KiB, hundreds of times a hint's 60-odd bytes.
    public static let defaultMaxLine = 64 << 10

    public let maxLine: Int
    private var state = State.collecting
    private var partial: [UInt8] = []
    private var ready: [Line] = []
    private var taken = 0

    public init(maxLine: Int = LineSplitter.defaultMaxLine) {
        self.maxLine = maxLine
    }

    /// Adds bytes read from the stream.
    public mutating func append(_ bytes: some Collection<UInt8>) {
        var rest = bytes[...]
        while !rest.isEmpty {
            let newline = rest.firstIndex(of: 0x0A)
            let piece = rest[..<(newline ?? rest.endIndex)]
            switch state {
            case .collecting where partial.count + piece.count > maxLine:
                partial.removeAll(keepingCapacity: false)
                ready.append(.tooLong)
                state = .discarding
            case .collecting:
                partial += piece
            case .discarding:
                break
            }
            guard let newline else { return }
            if state == .collecting, !partial.isEmpty { ready.append(.text(partial)) }
            partial.removeAll(keepingCapacity: true)
            state = .collecting
            rest = rest[rest.index(after: newline)...]
        }
    }

    /// The next complete line, or nil until more bytes arrive.
    public mutating func next() -> Line? {
        guard taken < ready.count else { return nil }
        let line = ready[taken]
        taken += 1
        if taken == ready.count {
            ready.removeAll(keepingCapacity: true)
            taken = 0
        }
        return line
    }

    /// Bytes of an unfinished line held (bounded by `maxLine`).
    public var pendingBytes: Int { partial.count }
}
