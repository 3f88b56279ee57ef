extension String {
    /// `value` with `digits` decimals ("2.0", "502.04"), as `pagerd`'s and `pager-bench`'s
    /// reports print numbers; no Foundation here. Non-finite values as Swift prints them.
    public init(format digits: Int, _ value: Double) {
        guard value.isFinite else { self = "\(value)"; return }
        var scale = 1
        for _ in 0..<digits { scale *= 10 }
        let n = Int((abs(value) * Double(scale)).rounded())
        let fraction = String(n % scale)
        self = (value < 0 ? "-" : "") + "\(n / scale)" + (digits == 0 ? "" : "." + String(repeating: "0", count: digits - fraction.count) + fraction)
    }
}
