import PagerKernel

/// The blocks of Protocols/vectors/*.hex and handshake.txt (spec §8): `name: value` lines
/// between blank lines, comments kept for messages.
struct WireVectorFile {
    struct Block {
        var comment: String
        var values: [String: String]
        var order: [String]
        /// The `hex:` (or named) value as bytes; spaces are for reading only.
        func bytes(_ name: String = "hex") -> [UInt8] { WireVectorFile.bytes(values[name] ?? "") }
    }
    var blocks: [Block] = []

    init(_ name: String) throws {
        let text = try readWholeFile(Tshark.root + "/Protocols/vectors/" + name)
        var current = Block(comment: "", values: [:], order: [])
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.allSatisfy(\.isWhitespace) {
                if !current.values.isEmpty { blocks.append(current) }
                current = Block(comment: "", values: [:], order: [])
            } else if line.hasPrefix("#") {
                if current.comment.isEmpty { current.comment = String(line.dropFirst(2)) }
            } else if let colon = line.firstIndex(of: ":") {
                let key = String(line[..<colon])
                current.values[key] = String(line[line.index(colon, offsetBy: 2)...])
                current.order.append(key)
            }
        }
        if !current.values.isEmpty { blocks.append(current) }
    }

    static func bytes(_ hex: String) -> [UInt8] {
        let digits = Array(hex.filter { !$0.isWhitespace }.utf8)
        return stride(from: 0, to: digits.count - 1, by: 2).map { UInt8(String(decoding: digits[$0...$0 + 1], as: UTF8.self), radix: 16)! }
    }
}
