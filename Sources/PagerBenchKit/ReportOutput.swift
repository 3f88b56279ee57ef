import PagerReport

/// The three ways a ``BenchReport`` is shown: a table for people, JSON for machines, and an
/// SVG picture (latency CDFs and throughput bars).
extension BenchReport {
    /// The shaped line rate in Gbit/s (`--link`, tc's units: kbit, mbit, gbit), if any.
    public var lineRateGbit: Double? {
        guard let link else { return nil }
        let digits = link.prefix { "0123456789.".contains($0) }
        guard let n = Double(digits) else { return nil }
        switch link.dropFirst(digits.count).lowercased() {
        case "gbit": return n
        case "mbit": return n / 1e3
        case "kbit": return n / 1e6
        case "bit", "": return n / 1e9
        default: return nil
        }
    }

    /// Gbit/s of the raw TCP stream baseline, if measured.
    var streamGbit: Double? { figure("tcp_stream_gbit")?.value }

    static func number(_ x: Double, _ digits: Int) -> String { x.isFinite ? String(format: digits, x) : "-" }

    private static func pad(_ s: String, _ width: Int) -> String { s + String(repeating: " ", count: max(1, width - s.count)) }

    /// The terminal table.
    public var table: String {
        var lines = ["pager-bench: \(sizeMiB) MiB region, \(transport)\(link.map { ", source link shaped to \($0) (tc tbf)" } ?? "")", ""]
        if !latencies.isEmpty {
            lines.append("latency (µs)                                            count      p50      p90      p99    p99.9      max")
            for (_, label, s) in latencies {
                let cells = [s.p50, s.p90, s.p99, s.p999, s.max].map { Self.pad(Self.number(Double($0) / 1000, 1), 9) }.joined()
                lines.append("  " + Self.pad(label, 54) + Self.pad("\(s.count)", 7) + cells)
            }
            lines.append("")
        }
        if !figures.isEmpty {
            lines.append("figures, with the same-run baseline each is compared with")
            let width = figures.map(\.label.count).max()! + 2
            for f in figures {
                var line = "  " + Self.pad(f.label, width) + Self.pad(Self.number(f.value, 2) + " " + f.unit, 16)
                if let b = f.baseline { line += f.ratio.map { "ratio \(Self.number($0, 2)) to \(b)" } ?? "(\(b))" }
                lines.append(line)
            }
            lines.append("")
        }
        if !throughput.isEmpty {
            lines.append("full transfer (every page verified)             seconds   pages/s    Gbit/s  of raw stream" + (lineRateGbit == nil ? "" : "  of line rate"))
            for (pattern, seconds) in throughput {
                let pages = Double(sizeMiB << 8) / seconds
                let gbit = Double(sizeMiB << 20) * 8 / seconds / 1e9
                lines.append("  " + Self.pad(pattern, 46) + Self.pad(Self.number(seconds, 3), 10) + Self.pad(Self.number(pages, 0), 11)
                             + Self.pad(Self.number(gbit, 2), 8) + Self.pad(streamGbit.map { Self.number(gbit / $0, 2) } ?? "-", 15)
                             + (lineRateGbit.map { Self.number(gbit / $0, 2) } ?? ""))
            }
            lines.append("")
        }
        if !transfers.isEmpty {
            let gib = Double(sizeMiB) / 1024
            lines.append("full transfer against the naive C pager  naive 16-page s  ratio  dest CPU s/GiB  source CPU s/GiB  pages by demand / prefetch / push  duplicates")
            for (pattern, _) in throughput {
                guard let t = transfers[pattern], let seconds = throughput.first(where: { $0.pattern == pattern })?.seconds else { continue }
                lines.append("  " + Self.pad(pattern, 39) + Self.pad(Self.number(t.naive16Seconds, 3), 17) + Self.pad(Self.number(seconds / t.naive16Seconds, 2), 7)
                             + Self.pad(Self.number(t.destinationCPU / gib, 2), 16) + Self.pad(Self.number(t.sourceCPU / gib, 2), 18)
                             + Self.pad("\(t.demand) / \(t.prefetch) / \(t.push)", 35) + "\(t.duplicates)")
            }
            lines.append("")
        }
        for (name, status) in peers { lines.append("peer \(name): \(status)") }
        for note in notes { lines.append("note: \(note)") }
        return lines.joined(separator: "\n")
    }

    /// One JSON object with stable keys (documented in the README).
    public var json: String {
        func str(_ s: String) -> String {
            "\"" + s.unicodeScalars.map { c -> String in
                switch c {
                case "\"": "\\\""
                case "\\": "\\\\"
                case "\n": "\\n"
                default: c.value < 0x20 ? "\\u00" + (c.value < 16 ? "0" : "") + String(c.value, radix: 16) : String(c)
                }
            }.joined() + "\""
        }
        func num(_ x: Double) -> String { x.isFinite ? "\(x)" : "null" }
        let figs = figures.map { f in
            "{\"key\":\(str(f.key)),\"label\":\(str(f.label)),\"value\":\(num(f.value)),\"unit\":\(str(f.unit)),"
                + "\"baseline\":\(f.baseline.map(str) ?? "null"),\"ratio\":\(f.ratio.map(num) ?? "null")}"
        }
        let lats = latencies.map { "\(str($0.key)):\($0.summary.json)" }
        let thr = throughput.map { t in
            let gbit = Double(sizeMiB << 20) * 8 / t.seconds / 1e9
            return "\(str(t.pattern)):{\"seconds\":\(num(t.seconds)),\"bytes\":\(sizeMiB << 20),\"pages_per_second\":\(num(Double(sizeMiB << 8) / t.seconds)),"
                + "\"gbit_per_second\":\(num(gbit)),\"vs_tcp_stream\":\(streamGbit.map { num(gbit / $0) } ?? "null"),"
                + "\"vs_line_rate\":\(lineRateGbit.map { num(gbit / $0) } ?? "null")"
                + (transfers[t.pattern].map { d in
                    ",\"naive16_seconds\":\(num(d.naive16Seconds)),\"vs_naive16\":\(num(t.seconds / d.naive16Seconds)),"
                        + "\"naive16_cpu_seconds\":\(num(d.naive16CPU)),\"dest_cpu_seconds\":\(num(d.destinationCPU)),\"source_cpu_seconds\":\(num(d.sourceCPU)),"
                        + "\"pages_by_demand\":\(d.demand),\"pages_by_prefetch\":\(d.prefetch),\"pages_by_push\":\(d.push),\"duplicate_pages\":\(d.duplicates)"
                } ?? "") + "}"
        }
        let prs = peers.map { "\(str($0.name)):\(str($0.status))" }
        return "{\"tool\":\"pager-bench\",\"format\":1,\"region_bytes\":\(sizeMiB << 20),\"transport\":\(str(transport)),"
            + "\"link\":\(link.map(str) ?? "null"),\"figures\":[\(figs.joined(separator: ","))],\"latency_ns\":{\(lats.joined(separator: ","))},"
            + "\"throughput\":{\(thr.joined(separator: ","))},\"peers\":{\(prs.joined(separator: ","))},\"notes\":[\(notes.map(str).joined(separator: ","))]}"
    }

    /// An SVG picture: latency CDFs (log time axis) on the left, full-transfer throughput per
    /// access pattern against the raw TCP stream on the right.
    public var svg: String {
        let w = 1000.0, h = 400.0 + 16 * Double(latencies.count)
        var out = ["<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">",
                   "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
                   "<text x=\"20\" y=\"22\" font-size=\"15\">pager-bench: \(sizeMiB) MiB, \(transport)</text>"]
        // Left: CDF, x = log10(µs) from 1 µs to 10 ms, y = percentile.
        let (x0, y0, pw, ph) = (60.0, 50.0, 480.0, 320.0)
        func px(_ ns: UInt64) -> Double {
            let us = max(1.0, Double(ns) / 1000)
            var l = 0.0, v = us
            while v >= 10 { v /= 10; l += 1 }
            // log10 by series for the fraction (no Foundation): log10(v) for 1 <= v < 10.
            let frac = Self.log10Small(v)
            return x0 + min(4, l + frac) / 4 * pw
        }
        func py(_ p: Double) -> Double { y0 + ph - p / 100 * ph }
        out.append("<rect x=\"\(x0)\" y=\"\(y0)\" width=\"\(pw)\" height=\"\(ph)\" fill=\"none\" stroke=\"#888\"/>")
        for (i, label) in ["1 µs", "10 µs", "100 µs", "1 ms", "10 ms"].enumerated() {
            let x = x0 + Double(i) / 4 * pw
            out.append("<line x1=\"\(x)\" y1=\"\(y0)\" x2=\"\(x)\" y2=\"\(y0 + ph)\" stroke=\"#ddd\"/><text x=\"\(x - 14)\" y=\"\(y0 + ph + 16)\">\(label)</text>")
        }
        for p in [0.0, 25, 50, 75, 100] {
            out.append("<text x=\"\(x0 - 34)\" y=\"\(py(p) + 4)\">\(Int(p))%</text>")
        }
        out.append("<text x=\"\(x0)\" y=\"\(y0 - 8)\">latency CDF (share of faults at or below)</text>")
        let colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
        for (i, l) in latencies.enumerated() where !l.summary.cdf.isEmpty {
            let points = l.summary.cdf.map { "\(Self.number(px($0.nanoseconds), 1)),\(Self.number(py($0.percentile), 1))" }.joined(separator: " ")
            let c = colours[i % colours.count]
            out.append("<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"2\" points=\"\(points)\"/>")
            // The legend goes under the plot, where no curve is.
            let ly = y0 + ph + 30 + Double(i) * 16
            out.append("<rect x=\"\(x0)\" y=\"\(ly)\" width=\"10\" height=\"10\" fill=\"\(c)\"/><text x=\"\(x0 + 16)\" y=\"\(ly + 9)\">\(l.label)</text>")
        }
        // Right: throughput bars in Gbit/s.
        let (bx, by, bw, bh) = (620.0, 50.0, 340.0, 320.0)
        var bars = throughput.map { ($0.pattern, Double(sizeMiB << 20) * 8 / $0.seconds / 1e9) }
        if let stream = figure("tcp_stream_gbit") { bars.append(("raw TCP", stream.value)) }
        if let iperf = figure("iperf3_gbit") { bars.append(("iperf3", iperf.value)) }
        let top = max(1, bars.map(\.1).max() ?? 1) * 1.1
        out.append("<rect x=\"\(bx)\" y=\"\(by)\" width=\"\(bw)\" height=\"\(bh)\" fill=\"none\" stroke=\"#888\"/>")
        out.append("<text x=\"\(bx)\" y=\"\(by - 8)\">full transfer, Gbit/s (raw TCP and iperf3: baselines)</text>")
        let slot = bw / Double(max(1, bars.count))
        for (i, bar) in bars.enumerated() {
            let height = bar.1 / top * bh
            let x = bx + Double(i) * slot + slot * 0.15
            let fill = bar.0 == "raw TCP" || bar.0 == "iperf3" ? "#999" : "#1f77b4"
            out.append("<rect x=\"\(Self.number(x, 1))\" y=\"\(Self.number(by + bh - height, 1))\" width=\"\(Self.number(slot * 0.7, 1))\" height=\"\(Self.number(height, 1))\" fill=\"\(fill)\"/>")
            out.append("<text x=\"\(Self.number(x, 1))\" y=\"\(Self.number(by + bh - height - 4, 1))\">\(Self.number(bar.1, 1))</text>")
            // Labels alternate between two lines so neighbours do not overlap.
            out.append("<text x=\"\(Self.number(x, 1))\" y=\"\(by + bh + 14 + Double(i % 2) * 13)\" font-size=\"10\">\(bar.0)</text>")
        }
        out.append("</svg>")
        return out.joined(separator: "\n")
    }

    /// log10(v) for 1 <= v < 10, to plot accuracy (ln by atanh series, then / ln 10).
    static func log10Small(_ v: Double) -> Double {
        let y = (v - 1) / (v + 1)
        var term = y, sum = 0.0
        var k = 1.0
        for _ in 0..<30 {
            sum += term / k
            term *= y * y
            k += 2
        }
        return 2 * sum / 2.302585092994046
    }
}
