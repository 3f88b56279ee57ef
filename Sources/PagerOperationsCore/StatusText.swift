import PagerHandoff
import PagerReport

/// `pagerd status` without `--json`: the status document as a few lines for a terminal.
public enum StatusText {
    public static func render(_ doc: JSONValue) -> String {
        let role = doc["role"]?.stringValue ?? "?"
        var lines = ["\(role) (pid \(number(doc["pid"]))), \(doc["version"]?.stringValue ?? ""), up \(seconds(doc["uptime-ms"]))"]
        if case .array(let migrations)? = doc["migrations"] {
            lines[0] += ", source \(doc["source"]?.stringValue ?? "?")"
            if let t = doc["totals"] {
                lines.append("migrations: \(number(t["active"])) active, \(number(t["completed"])) completed, \(number(t["failed"])) failed")
            }
            for m in migrations { lines += migration(m) }
        }
        if case .array(let sessions)? = doc["sessions"] {
            lines[0] += ", listening on \(doc["listen"]?.stringValue ?? "?")"
            if case .array(let regions)? = doc["regions"] {
                for r in regions {
                    lines.append("region \(number(r["id"])) \"\(r["name"]?.stringValue ?? "")\": \(mib(r["bytes"])) MiB in \(number(r["page-size"]).bytesWord) pages\(r["live"] == .bool(true) ? ", live (pre-copy)" : "")")
                }
            }
            if let p = doc["precopy"] {
                lines.append("pre-copy: \(p["status"]?.stringValue ?? "?"), \(number(p["dirty-sync-count"])) round(s) done, downtime \(number(p["downtime"])) ms, \(number(p["invalidated-pages"])) pages invalidated")
            }
            lines.append("sessions open: \(sessions.count)")
            for s in sessions {
                let ram = s["ram"]
                lines.append("  session \(s["session"]?.stringValue ?? "") with \(s["peer"]?.stringValue ?? ""): \(s["status"]?.stringValue ?? ""), \(mib(ram?["transferred"])) MiB sent, \(number(s["postcopy-requests"])) demand and \(number(s["prefetch-requests"])) prefetch requests, \(number(s["resumes"])) resume(s)")
            }
            if let t = doc["totals"] {
                lines.append("totals: \(number(t["sessions"])) session(s), \(mib(t["transferred"])) MiB sent as bytes, \(mib(t["zero-bytes"])) MiB as zero ranges, \(number(t["failed-sessions"])) failed, \(number(t["resumes"])) resume(s)")
            }
        }
        return lines.joined(separator: "\n")
    }

    static func migration(_ m: JSONValue) -> [String] {
        let ram = m["ram"]
        let total = ram?["total"]?.uint64 ?? 0, remaining = ram?["remaining"]?.uint64 ?? 0
        let percent = total == 0 ? 0 : Double(total - min(total, remaining)) * 100 / Double(total)
        var lines = ["migration \(number(m["id"])): \(m["status"]?.stringValue ?? "?"), region \"\(m["region"]?.stringValue ?? "")\", session \(m["session"]?.stringValue ?? "-"), \(seconds(m["total-time"]))"]
        lines.append("  memory      \(mib(ram?["total"])) MiB, \(String(format: 1, percent))% local, \(mib(ram?["remaining"])) MiB remaining, \(mib(ram?["transferred"])) MiB received (\(number(ram?["mbps"])) Mbit/s)")
        let l = m["fault-latency-us"]
        lines.append("  faults      \(number(m["faults"])), fault to install: p50 < \(number(l?["p50-below"])) µs, p99 < \(number(l?["p99-below"])) µs, max < \(number(l?["max-below"])) µs")
        lines.append("  requests    \(number(ram?["postcopy-requests"])) demand, \(number(m["prefetch-requests"])) prefetch; pages \(number(ram?["normal"])) with data, \(number(ram?["duplicate"])) zero")
        lines.append("  outages     \(number(m["outages"])), \(number(m["resumes"])) resumed; \(number(m["pages-poisoned"])) pages poisoned")
        if let e = m["error-desc"]?.stringValue { lines.append("  error       \(e)") }
        return lines
    }

    static func number(_ v: JSONValue?) -> String {
        if case .number(let text)? = v { return text }
        return "?"
    }

    static func mib(_ v: JSONValue?) -> String {
        guard let b = v?.uint64 else { return "?" }
        return String(format: 1, Double(b) / Double(1 << 20))
    }

    static func seconds(_ v: JSONValue?) -> String {
        guard let ms = v?.uint64 else { return "?" }
        return "\(String(format: 1, Double(ms) / 1000)) s"
    }
}

extension String {
    /// "4096" as "4 KiB", "2097152" as "2 MiB".
    var bytesWord: String {
        guard let n = Int(self) else { return self }
        return n >= 1 << 20 ? "\(n >> 20) MiB" : "\(n >> 10) KiB"
    }
}
