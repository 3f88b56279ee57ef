import PagerCore
import PagerDestination
import PagerHandoff
import PagerKernel
import PagerOperationsCore

extension DestinationBook {
    /// The status document: field names as QEMU's `query-migrate` has them where it has one
    /// (`status`, `total-time`, `ram.total`, `ram.remaining`, `ram.transferred`,
    /// `postcopy-requests`, `postcopy-latency`, `postcopy-latency-dist`, `error-desc`).
    public func document(version: String) -> JSONValue {
        let (entries, retired) = snapshot
        let finished = retired.values.reduce(into: (0, 0)) { $0.0 += $1.completed; $0.1 += $1.failed }
        let completed = finished.0 + entries.count { $0.progress.phase == .completed }
        let failed = finished.1 + entries.count { $0.progress.phase == .failed }
        return .object([
            ("role", .string(role)),
            ("version", .string(version)),
            ("pid", .int(Int(processID()))),
            ("uptime-ms", .uint((monotonicNanoseconds() - started) / 1_000_000)),
            ("source", .string(source)),
            ("migrations", .array(entries.map(DestinationBook.document))),
            ("totals", .object([
                ("migrations", .int(completed + failed + entries.count { !$0.progress.phase.isFinished })),
                ("active", .int(entries.count { !$0.progress.phase.isFinished })),
                ("completed", .int(completed)),
                ("failed", .int(failed)),
            ])),
        ])
    }

    static func document(_ e: Entry) -> JSONValue {
        let p = e.progress
        let pageSize = p.pageSize.load(ordering: .relaxed)
        let received = p.bytesReceived.load(ordering: .relaxed)
        let ms = p.totalMilliseconds
        let counts = p.faultLatency.counts
        let faults = counts.reduce(0, +)
        var members: [(String, JSONValue)] = [
            ("id", .int(e.id)),
            ("status", .string(p.phase.name)),
            ("region", .string(e.region)),
            ("session", .string(e.session == 0 ? "" : hex(e.session))),
            ("total-time", .uint(ms)),
            ("ram", .object([
                ("total", .uint(UInt64(p.pages.load(ordering: .relaxed) * pageSize))),
                ("remaining", .uint(UInt64(p.pagesRemaining * pageSize))),
                ("transferred", .uint(received)),
                ("page-size", .int(pageSize)),
                ("normal", .int(p.installedPages.load(ordering: .relaxed))),
                ("duplicate", .int(p.zeroPages.load(ordering: .relaxed))),
                ("precopy-bytes", .uint(p.stagedBytes.load(ordering: .relaxed))),
                ("mbps", .decimal(ms == 0 ? 0 : Double(received) * 8 / 1e6 / (Double(ms) / 1000))),
                ("postcopy-requests", .int(p.demandRequests.load(ordering: .relaxed))),
            ])),
            ("pages-local", .int(p.pagesLocal.load(ordering: .relaxed))),
            ("faults", .int(p.faults.load(ordering: .relaxed))),
            ("prefetch-requests", .int(p.prefetchRequests.load(ordering: .relaxed))),
            ("duplicates-dropped", .int(p.duplicatePages.load(ordering: .relaxed))),
            // Pages installed by the PAGE_DATA flags of their frame, or staged by pre-copy.
            ("pages-arrived", .object([
                ("demand", .int(p.arrivedByDemand.load(ordering: .relaxed))),
                ("prefetch", .int(p.arrivedByPrefetch.load(ordering: .relaxed))),
                ("push", .int(p.arrivedByPush.load(ordering: .relaxed))),
                ("staged", .int(p.arrivedStaged.load(ordering: .relaxed))),
            ])),
            // Mean fault latency in ns, as QEMU 10.1 reports its own.
            ("postcopy-latency", .uint(faults == 0 ? 0 : UInt64(p.faultLatency.sumSeconds * 1e9) / faults)),
            ("postcopy-latency-dist", .array(counts.map { .uint($0) })),
            ("fault-latency-us", .object([
                ("p50-below", .uint(LatencyHistogram.quantileUpperBoundMicroseconds(counts, 0.5))),
                ("p99-below", .uint(LatencyHistogram.quantileUpperBoundMicroseconds(counts, 0.99))),
                ("max-below", .uint(LatencyHistogram.quantileUpperBoundMicroseconds(counts, 1))),
            ])),
            ("outages", .int(p.outages.load(ordering: .relaxed))),
            ("resumes", .int(p.resumes.load(ordering: .relaxed))),
            ("pages-poisoned", .int(p.pagesPoisoned.load(ordering: .relaxed))),
        ]
        if let error = e.error { members.append(("error-desc", .string(error))) }
        return .object(members)
    }

    /// The metric families, one series per region name (live and finished migrations added).
    public func metrics(version: String) -> [MetricFamily] {
        let (entries, retired) = snapshot
        var regions = retired
        for e in entries { regions[e.region, default: Retired()].add(e.progress) }
        var remaining: [String: Int] = [:]
        for e in entries where !e.progress.phase.isFinished { remaining[e.region, default: 0] += e.progress.pagesRemaining }
        let names = regions.keys.sorted()
        func perRegion(_ value: (Retired) -> Double, _ extra: [(String, String)] = []) -> [MetricFamily.Sample] {
            names.map { MetricFamily.Sample([("region", $0)] + extra, value(regions[$0]!)) }
        }
        let active = entries.count { !$0.progress.phase.isFinished }
        return [
            MetricFamily("pager_build_info", .gauge, help: "The pager's version (the value is always 1).", samples: [.init([("version", version)], 1)]),
            MetricFamily("pager_dest_migrations_active", .gauge, help: "Migrations in progress.", samples: [.init([], Double(active))]),
            MetricFamily("pager_dest_migrations_total", .counter, help: "Migrations finished, by outcome.",
                         samples: perRegion({ Double($0.completed) }, [("outcome", "completed")]) + perRegion({ Double($0.failed) }, [("outcome", "failed")])),
            MetricFamily("pager_dest_faults_total", .counter, help: "Page faults of the workload on missing memory.", samples: perRegion { Double($0.faults) }),
            MetricFamily(histogram: "pager_dest_fault_latency_seconds", help: "From a fault to its page installed (power-of-two microsecond buckets, as QEMU's postcopy-latency-dist).",
                         series: names.map { name in
                             let r = regions[name]!
                             var cumulative: UInt64 = 0
                             let buckets = r.latency.enumerated().map { k, c -> (upperBound: Double, cumulativeCount: UInt64) in
                                 cumulative += c
                                 return (LatencyHistogram.upperBoundSeconds(k), cumulative)
                             }
                             return MetricFamily.HistogramSeries(labels: [("region", name)], buckets: buckets, count: cumulative, sum: r.latencySum)
                         }),
            MetricFamily("pager_dest_pages_remaining", .gauge, help: "Pages of running migrations not local yet.",
                         samples: names.map { .init([("region", $0)], Double(remaining[$0] ?? 0)) }),
            MetricFamily("pager_dest_pages_installed_total", .counter, help: "Pages installed, with data or as zero pages.",
                         samples: perRegion({ Double($0.installed) }, [("how", "data")]) + perRegion({ Double($0.zero) }, [("how", "zero")])),
            MetricFamily("pager_dest_duplicate_pages_total", .counter, help: "Pages that arrived again when already local (dropped).", samples: perRegion { Double($0.duplicates) }),
            MetricFamily("pager_dest_pages_poisoned_total", .counter, help: "Pages poisoned because their migration failed (the workload gets SIGBUS there).", samples: perRegion { Double($0.poisoned) }),
            MetricFamily("pager_dest_received_bytes_total", .counter, help: "Page bytes received from sources.", samples: perRegion { Double($0.bytes) }),
            MetricFamily("pager_dest_requests_total", .counter, help: "Page requests sent, urgent (demand) or prefetch.",
                         samples: perRegion({ Double($0.demand) }, [("kind", "demand")]) + perRegion({ Double($0.prefetch) }, [("kind", "prefetch")])),
            MetricFamily("pager_dest_outages_total", .counter, help: "Times the connections to the source were lost.", samples: perRegion { Double($0.outages) }),
            MetricFamily("pager_dest_resumes_total", .counter, help: "Sessions resumed after a lost connection.", samples: perRegion { Double($0.resumes) }),
        ]
    }
}

extension DestinationBook {
    /// One line on the running migrations, for systemd's `STATUS=` (nil when none runs).
    public func progressLine() -> String? {
        let running = snapshot.entries.filter { !$0.progress.phase.isFinished }
        guard !running.isEmpty else { return nil }
        return running.map { e in
            let p = e.progress
            let pages = p.pages.load(ordering: .relaxed)
            let local = pages == 0 ? 0 : (pages - p.pagesRemaining) * 100 / pages
            let mib = (pages * p.pageSize.load(ordering: .relaxed)) >> 20
            let outages = p.outages.load(ordering: .relaxed)
            return "migration \(e.id) \(p.phase.name): \(local)% of \(mib) MiB local, \(p.faults.load(ordering: .relaxed)) faults" + (outages > 0 ? ", \(outages) outage(s)" : "")
        }.joined(separator: "; ")
    }
}

extension DestinationBook {
    /// One migration's entry as the status document has it (`--json` summaries), with the
    /// daemon's role and version.
    public func document(of e: Entry, version: String) -> JSONValue {
        guard case .object(let members) = DestinationBook.document(e) else { return .null }
        return .object([("role", .string(role)), ("version", .string(version))] + members)
    }
}
