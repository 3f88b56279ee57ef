/// One metric family of Prometheus's text exposition format (version 0.0.4): its name,
/// HELP and TYPE, and its samples. Names and label names are checked when the family is
/// made (a bug otherwise: they come from this code, never from outside); label values are
/// escaped as the format says.
public struct MetricFamily: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case counter, gauge, histogram
    }

    /// One series: its labels (beyond the constant ones) and its value.
    public struct Sample: Sendable, Equatable {
        public var labels: [(String, String)]
        public var value: Double

        public init(_ labels: [(String, String)] = [], _ value: Double) {
            self.labels = labels
            self.value = value
        }

        public static func == (a: Sample, b: Sample) -> Bool {
            a.value == b.value && a.labels.count == b.labels.count && zip(a.labels, b.labels).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        }
    }

    /// One histogram series: cumulative counts per upper bound (seconds, ascending; `+Inf`
    /// is added), the count and the sum of the observations.
    public struct HistogramSeries: Sendable, Equatable {
        public var labels: [(String, String)]
        public var buckets: [(upperBound: Double, cumulativeCount: UInt64)]
        public var count: UInt64
        public var sum: Double

        public init(labels: [(String, String)] = [], buckets: [(upperBound: Double, cumulativeCount: UInt64)], count: UInt64, sum: Double) {
            self.labels = labels
            self.buckets = buckets
            self.count = count
            self.sum = sum
        }

        public static func == (a: HistogramSeries, b: HistogramSeries) -> Bool {
            a.count == b.count && a.sum == b.sum && a.buckets.count == b.buckets.count
                && zip(a.buckets, b.buckets).allSatisfy { $0.upperBound == $1.upperBound && $0.cumulativeCount == $1.cumulativeCount }
                && a.labels.count == b.labels.count && zip(a.labels, b.labels).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        }
    }

    public let name: String
    public let help: String
    public let kind: Kind
    public var samples: [Sample] = []
    public var histograms: [HistogramSeries] = []

    public init(_ name: String, _ kind: Kind, help: String, samples: [Sample] = []) {
        precondition(MetricFamily.isValidName(name), "metric name \(name)")
        precondition(kind != .counter || name.hasSuffix("_total"), "a counter's name ends in _total: \(name)")
        for s in samples { for (l, _) in s.labels { precondition(MetricFamily.isValidLabelName(l), "label name \(l)") } }
        self.name = name
        self.kind = kind
        self.help = help
        self.samples = samples
    }

    public init(histogram name: String, help: String, series: [HistogramSeries]) {
        self.init(name, .histogram, help: help)
        histograms = series
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`
    public static func isValidName(_ s: String) -> Bool {
        guard let first = s.utf8.first, isNameStart(first) else { return false }
        return s.utf8.allSatisfy { isNameStart($0) || ($0 >= 0x30 && $0 <= 0x39) }
    }

    /// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
    public static func isValidLabelName(_ s: String) -> Bool {
        guard let first = s.utf8.first, isNameStart(first), first != UInt8(ascii: ":"), !s.hasPrefix("__") else { return false }
        return s.utf8.allSatisfy { ($0 != UInt8(ascii: ":") && isNameStart($0)) || ($0 >= 0x30 && $0 <= 0x39) }
    }

    private static func isNameStart(_ c: UInt8) -> Bool {
        (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == UInt8(ascii: "_") || c == UInt8(ascii: ":")
    }
}

/// Writes metric families in the text exposition format, each series with `constantLabels`
/// first (an operator's `--metrics-label domain=vm1`).
public enum Exposition {
    /// The Content-Type of what ``write(_:constantLabels:)`` returns.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public static func write(_ families: [MetricFamily], constantLabels: [(String, String)] = []) -> String {
        var out = ""
        for family in families {
            out += "# HELP \(family.name) \(escapeHelp(family.help))\n"
            out += "# TYPE \(family.name) \(family.kind.rawValue)\n"
            for s in family.samples {
                out += "\(family.name)\(labelSet(constantLabels + s.labels)) \(number(s.value))\n"
            }
            for h in family.histograms {
                let labels = constantLabels + h.labels
                for b in h.buckets {
                    out += "\(family.name)_bucket\(labelSet(labels + [("le", number(b.upperBound))])) \(b.cumulativeCount)\n"
                }
                out += "\(family.name)_bucket\(labelSet(labels + [("le", "+Inf")])) \(h.count)\n"
                out += "\(family.name)_sum\(labelSet(labels)) \(number(h.sum))\n"
                out += "\(family.name)_count\(labelSet(labels)) \(h.count)\n"
            }
        }
        return out
    }

    static func labelSet(_ labels: [(String, String)]) -> String {
        guard !labels.isEmpty else { return "" }
        return "{" + labels.map { "\($0.0)=\"\(escapeLabelValue($0.1))\"" }.joined(separator: ",") + "}"
    }

    /// A label value: `\`, `"` and newline escaped.
    static func escapeLabelValue(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// HELP text: `\` and newline escaped.
    static func escapeHelp(_ s: String) -> String {
        s.replacing("\\", with: "\\\\").replacing("\n", with: "\\n")
    }

    /// Integers without a fraction, others in Swift's shortest round-trip form; NaN and the
    /// infinities as the format spells them.
    static func number(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return "\(v)"
    }
}
