import PagerHarness
import PagerKernel
import PagerReport

/// How a benchmark migration's session is protected: the daemons' flags for it and the words
/// the destination logs for such a session (`Features.protectionDescription`).
public enum Protection: String, CaseIterable, Sendable {
    case plain
    case authenticated
    case encrypted

    func arguments(keyFile: String) -> (source: [String], dest: [String]) {
        switch self {
        case .plain: (["--insecure-no-auth"], ["--insecure-no-auth"])
        case .authenticated: (["--key-file", keyFile], ["--key-file", keyFile])
        case .encrypted: (["--key-file", keyFile], ["--key-file", keyFile, "--encrypt"])
        }
    }

    var logged: String {
        switch self {
        case .plain: "NOT authenticated"
        case .authenticated: "authenticated, not encrypted"
        case .encrypted: "authenticated, encrypted"
        }
    }
}

extension SuiteRun {
    /// What authentication and encryption cost: the idle 4 KiB fault p50 and the full transfer
    /// (no access), plain, authenticated and encrypted, in `rounds` interleaved rounds (the
    /// order rotates each round so that no mode always runs first); the medians are compared
    /// with the plain session's, the plain ones with this run's wire baselines, and the extra
    /// time of encryption with libcrypto's own sealing and opening rate on this CPU
    /// (the floor of what encryption adds).
    func protectionScenario(rounds: Int) throws {
        advance("baseline: local AES-256-GCM seal and open")
        let bulk = try SealBenchmark.run(bytes: min(sizeMiB, 256) << 20, recordBytes: 512 << 10)
        let small = try SealBenchmark.run(bytes: 64 << 20, recordBytes: basePageSize)
        let regionBytes = Double(sizeMiB << 20)
        let sealSecondsForRegion = bulk.sealSeconds * regionBytes / Double(bulk.bytes)
        let openSecondsForRegion = bulk.openSeconds * regionBytes / Double(bulk.bytes)
        let pageSealOpenNs = (small.sealSeconds + small.openSeconds) * 1e9 / Double(small.bytes / basePageSize)

        var p50: [Protection: [Double]] = [:]
        var full: [Protection: [Double]] = [:]
        let modes = Protection.allCases
        for round in 0..<rounds {
            for i in 0..<modes.count {
                let mode = modes[(i + round) % modes.count]
                advance("pager: \(mode.rawValue), 4 KiB faults and full transfer (round \(round + 1) of \(rounds))")
                let (_, idle) = try migrate("protection-idle-\(mode.rawValue)-\(round)", destFlags: ["--no-push", "--no-prefetch"],
                                            workloadArgs: ["--access", "random", "--touch-pages", "\(samples)"], protection: mode)
                p50[mode, default: []].append(Double(idle.p50))
                let (kv, _) = try migrate("protection-full-\(mode.rawValue)-\(round)", destFlags: [], workloadArgs: ["--access", "none"], protection: mode)
                guard let seconds = kv["touch-seconds"], Int(kv["pages"] ?? 0) * basePageSize == sizeMiB << 20 else {
                    throw HarnessError("full transfer (\(mode.rawValue)) did not verify the whole region: \(kv)")
                }
                full[mode, default: []].append(seconds)
            }
        }
        func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2 }
        let plainP50 = median(p50[.plain]!), plainFull = median(full[.plain]!)

        report.figures.append(Figure(key: "aes_gcm_seal_gbit", label: "local AES-256-GCM seal, 512 KiB records, one vCPU",
                                     value: Double(bulk.bytes) * 8 / bulk.sealSeconds / 1e9, unit: "Gbit/s",
                                     baseline: streamSeconds == nil ? nil : "raw TCP stream", ratio: streamSeconds.map { $0 / sealSecondsForRegion }))
        report.figures.append(Figure(key: "aes_gcm_open_gbit", label: "local AES-256-GCM open in place, 512 KiB records, one vCPU",
                                     value: Double(bulk.bytes) * 8 / bulk.openSeconds / 1e9, unit: "Gbit/s",
                                     baseline: streamSeconds == nil ? nil : "raw TCP stream", ratio: streamSeconds.map { $0 / openSecondsForRegion }))
        report.figures.append(Figure(key: "aes_gcm_page_us", label: "local AES-256-GCM seal + open of one 4 KiB record",
                                     value: pageSealOpenNs / 1000, unit: "µs"))
        report.figures.append(Figure(key: "plain_idle_4k_p50_us", label: "4 KiB fault p50, idle, plain session (median of \(rounds))",
                                     value: plainP50 / 1000, unit: "µs", baseline: expectedIdle4k == nil ? nil : "round trip p50 + local fault p50",
                                     ratio: expectedIdle4k.map { plainP50 / $0 }))
        for mode in [Protection.authenticated, .encrypted] {
            let m = median(p50[mode]!)
            report.figures.append(Figure(key: "\(mode.rawValue)_idle_4k_p50_us", label: "4 KiB fault p50, idle, \(mode.rawValue) session (median of \(rounds))",
                                         value: m / 1000, unit: "µs", baseline: "plain session's p50", ratio: m / plainP50))
        }
        report.figures.append(Figure(key: "plain_full_s", label: "full transfer, plain session (median of \(rounds))", value: plainFull, unit: "s",
                                     baseline: streamSeconds == nil ? nil : "raw TCP stream of the region", ratio: streamSeconds.map { plainFull / $0 }))
        for mode in [Protection.authenticated, .encrypted] {
            let m = median(full[mode]!)
            report.figures.append(Figure(key: "\(mode.rawValue)_full_s", label: "full transfer, \(mode.rawValue) session (median of \(rounds))",
                                         value: m, unit: "s", baseline: "plain session's full transfer", ratio: m / plainFull))
        }
        // Sealing runs on the source's vCPU and opening on the destination's, beside the rest
        // of each side's work; a plain transfer keeps both busy, so encryption cannot cost less
        // than the slower of the two on top of the plain transfer.
        let encryptedFloor = plainFull + max(sealSecondsForRegion, openSecondsForRegion)
        let encryptedFull = median(full[.encrypted]!)
        report.figures.append(Figure(key: "encrypted_full_floor_s", label: "full transfer, encrypted: floor", value: encryptedFloor, unit: "s",
                                     baseline: "plain transfer + the slower of sealing and opening the region locally"))
        report.figures.append(Figure(key: "encrypted_full_vs_floor", label: "full transfer, encrypted, against its floor", value: encryptedFull, unit: "s",
                                     baseline: "the floor above", ratio: encryptedFull / encryptedFloor))
        func list(_ xs: [Double], _ scale: Double, _ digits: Int) -> String { xs.map { BenchReport.number($0 * scale, digits) }.joined(separator: ", ") }
        for mode in modes {
            report.notes.append("protection rounds, \(mode.rawValue): 4 KiB fault p50 \(list(p50[mode]!, 1e-3, 1)) µs; full transfer \(list(full[mode]!, 1, 3)) s")
        }
    }
}
