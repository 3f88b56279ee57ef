import PagerHandoff
import PagerReport

/// Short forms for building status documents.
extension JSONValue {
    static func int(_ v: Int) -> JSONValue { .number(String(v)) }
    static func uint(_ v: UInt64) -> JSONValue { .unsigned(v) }
    /// A number with three decimals (rates, averages); null if not finite.
    static func decimal(_ v: Double) -> JSONValue { v.isFinite ? .number(String(format: 3, v)) : .null }
}
