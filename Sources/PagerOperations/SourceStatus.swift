import PagerHandoff
import PagerKernel
import PagerOperationsCore
import PagerSource

/// A source daemon's status and metrics, read from its server (totals over every session,
/// the sessions open now) and its live region's pre-copy outcome so far.
public struct SourceStatus: Sendable {
    public let role: String
    public let server: SourceServer
    public let regions: [ServedRegion]
    let started = monotonicNanoseconds()

    public init(role: String, server: SourceServer, regions: [ServedRegion]) {
        self.role = role
        self.server = server
        self.regions = regions
    }

    var liveRegion: ServedRegion? { regions.first { $0.live != nil } }

    /// The status document (QEMU's `query-migrate` names where it has one: `status`,
    /// `ram.transferred`, `postcopy-requests`, `dirty-sync-count`, `downtime`).
    public func document(version: String) -> JSONValue {
        let c = server.counts
        var members: [(String, JSONValue)] = [
            ("role", .string(role)),
            ("version", .string(version)),
            ("pid", .int(Int(processID()))),
            ("uptime-ms", .uint((monotonicNanoseconds() - started) / 1_000_000)),
            ("listen", .string("\(server.listener.endpoint)")),
            ("regions", .array(regions.map { r in
                .object([("id", .int(Int(r.id))), ("name", .string(r.name)), ("bytes", .uint(r.length)),
                         ("page-size", .int(r.pageSize)), ("live", .bool(r.live != nil))])
            })),
            ("sessions", .array(server.sessions.sorted { $0.id < $1.id }.map { s in
                .object([
                    ("session", .string(hex(s.id))),
                    ("peer", .string(s.peer)),
                    ("status", .string(s.connected ? "active" : "lingering")),
                    ("encrypted", .bool(s.encrypted)),
                    ("resumes", .int(s.resumes)),
                    ("postcopy-requests", .int(s.demandRequests)),
                    ("prefetch-requests", .int(s.prefetchRequests)),
                    ("ram", .object([("transferred", .uint(s.bytesSent)), ("zero-bytes", .uint(s.zeroBytes)), ("resent-bytes", .uint(s.resentBytes))])),
                ])
            })),
        ]
        if let live = liveRegion?.live {
            let o = live.outcome
            members.append(("precopy", .object([
                ("status", .string(o.switched ? "postcopy-active" : "active")),
                ("dirty-sync-count", .int(o.rounds.count)),
                ("rounds", .array(o.rounds.map { r in
                    .object([("index", .int(r.index)), ("pages", .int(r.pagesSent)), ("bytes", .uint(r.bytesSent)),
                             ("dirty-pages", .int(r.dirtyPages)), ("ms", .uint(r.nanoseconds / 1_000_000))])
                })),
                ("downtime", .decimal(Double(o.pauseNanoseconds) / 1e6)),
                ("invalidated-pages", .int(o.invalidatedPages)),
            ])))
        }
        members.append(("totals", .object([
            ("sessions", .int(c.sessions)),
            ("failed-sessions", .int(c.failedSessions)),
            ("authentication-failures", .int(c.authenticationFailures)),
            ("postcopy-requests", .int(c.demandRequests)),
            ("prefetch-requests", .int(c.prefetchRequests)),
            ("transferred", .uint(c.bytesSent)),
            ("zero-bytes", .uint(c.zeroBytes)),
            ("resumes", .int(c.resumes)),
            ("resent-bytes", .uint(c.resentBytes)),
            ("linger-expired", .int(c.lingerExpired)),
            ("handshakes", .object([("evicted", .int(c.handshakesEvicted)), ("timed-out", .int(c.handshakesTimedOut)),
                                    ("refused", .int(c.handshakesRefused)), ("abandoned", .int(c.handshakesAbandoned))])),
        ])))
        return .object(members)
    }

    public func metrics(version: String) -> [MetricFamily] {
        let c = server.counts
        let sessions = server.sessions
        let rounds = liveRegion?.live?.outcome
        var families = [
            MetricFamily("pager_build_info", .gauge, help: "The pager's version (the value is always 1).", samples: [.init([("version", version)], 1)]),
            MetricFamily("pager_source_sessions_total", .counter, help: "Sessions begun.", samples: [.init([], Double(c.sessions))]),
            MetricFamily("pager_source_sessions_active", .gauge, help: "Sessions open, by whether their connections are attached or the session lingers for a resume.",
                         samples: [.init([("state", "connected")], Double(sessions.count { $0.connected })),
                                   .init([("state", "lingering")], Double(sessions.count { !$0.connected }))]),
            MetricFamily("pager_source_sessions_failed_total", .counter, help: "Sessions or connections ended by errors (refused authentication and expired lingers included).",
                         samples: [.init([], Double(c.failedSessions))]),
            MetricFamily("pager_source_authentication_failures_total", .counter, help: "Connections refused because the peer did not prove it holds a key.",
                         samples: [.init([], Double(c.authenticationFailures))]),
            MetricFamily("pager_source_requests_total", .counter, help: "Page requests answered, urgent (demand) or prefetch.",
                         samples: [.init([("kind", "demand")], Double(c.demandRequests)), .init([("kind", "prefetch")], Double(c.prefetchRequests))]),
            MetricFamily("pager_source_sent_bytes_total", .counter, help: "Page bytes sent (pre-copy rounds included).", samples: [.init([], Double(c.bytesSent))]),
            MetricFamily("pager_source_zero_bytes_total", .counter, help: "Bytes sent as zero ranges (holes and zero pages: no page bytes).", samples: [.init([], Double(c.zeroBytes))]),
            MetricFamily("pager_source_resumes_total", .counter, help: "Connections that resumed a session after a lost one.", samples: [.init([], Double(c.resumes))]),
            MetricFamily("pager_source_resent_bytes_total", .counter, help: "Bytes sent again after resumes (lost in flight).", samples: [.init([], Double(c.resentBytes))]),
            MetricFamily("pager_source_handshakes_dropped_total", .counter, help: "Handshakes that did not complete, by why.",
                         samples: [.init([("why", "evicted")], Double(c.handshakesEvicted)), .init([("why", "timed_out")], Double(c.handshakesTimedOut)),
                                   .init([("why", "refused")], Double(c.handshakesRefused)), .init([("why", "abandoned")], Double(c.handshakesAbandoned))]),
        ]
        if let rounds, let live = liveRegion?.live {
            families.append(MetricFamily("pager_source_precopy_sent_bytes_total", .counter, help: "Page bytes sent in pre-copy rounds (part of pager_source_sent_bytes_total).",
                                         samples: [.init([], Double(live.precopyBytesSent.load(ordering: .relaxed)))]))
            families.append(MetricFamily("pager_precopy_rounds_total", .counter, help: "Pre-copy rounds completed (QEMU's dirty-sync-count).", samples: [.init([], Double(rounds.rounds.count))]))
            families.append(MetricFamily("pager_migration_downtime_seconds", .gauge, help: "The workload's pause at the switch to post-copy (0 before it).",
                                         samples: [.init([], Double(rounds.pauseNanoseconds) / 1e9)]))
        }
        return families
    }
}
