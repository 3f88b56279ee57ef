import PagerCore
import PagerKernel
import PagerWire

/// What an install puts into the workload's pages.
enum PageSource {
    /// Bytes of the pages, one unit after another.
    case bytes(UnsafeRawPointer)
    /// Zeros (a hole, a zero page, or a page the workload dropped).
    case zeros
}

/// How installed pages came: the PAGE_DATA flags of their frame (urgent: a demand fault's
/// reply; push: the background push; neither: a prefetch reply), or staged by pre-copy.
enum Arrival {
    case demand, prefetch, push, staged

    init(_ flags: PageDataHeader.Flags) {
        self = flags.contains(.urgent) ? .demand : flags.contains(.push) ? .push : .prefetch
    }
}

/// The installer's own resources, used under the resolver's lock only.
final class Installer {
    /// One unit of zeros, for memory `UFFDIO_ZEROPAGE` does not serve (shmem, hugetlbfs).
    let zeroUnit: UnsafeMutableRawPointer
    /// `UFFDIO_ZEROPAGE` works on anonymous memory only; set false at its first EINVAL.
    var zeroPageWorks = true

    init(unit: Int) {
        zeroUnit = .allocate(byteCount: unit, alignment: unit)
        zeroUnit.initializeMemory(as: UInt8.self, repeating: 0, count: unit)
    }

    deinit { zeroUnit.deallocate() }
}

extension FaultResolver {
    /// Pages installed per lock hold: 64 KiB of 4 KiB pages (one UFFDIO_COPY of 16 pages
    /// measured near the best copy rate here), or one huge page.
    var installBatch: Int { max(1, (64 << 10) / unit) }

    /// Installs whole units, in batches, taking the lock per batch: a fault (which needs the
    /// lock to read its event) waits for at most one batch, not a whole 2 MiB frame.
    /// `source` nil: zeros. Returns the ranges to wake (``wakeAll(_:)``) once the caller has
    /// nothing more to install right away.
    func installUnits(_ units: Range<Int>, from source: UnsafeRawPointer?, arrival: Arrival, forFault: Bool = false) -> [AddressRange] {
        installRuns([(units, source)], arrival: arrival, forFault: forFault)
    }

    /// Installs runs of whole units (a frame's data and zero runs, in order), a batch of
    /// units per lock hold across runs: a sparse frame's many short runs cost one lock use
    /// (and, from the background push receiver, its two scheduling-policy changes) per 64 KiB,
    /// not per run. A hold ends early when a fault waits for the lock (`forFault` is such a
    /// fault's own install, the demand receiver's): with 64 KiB holds and no yielding the p99
    /// of faults under push rose to 3.8x the idle p50; with 16 KiB holds the transfers took
    /// 1.2-1.4x longer (2026-12-04, 4 interleaved rounds).
    func installRuns(_ runs: [(units: Range<Int>, source: UnsafeRawPointer?)], arrival: Arrival, forFault: Bool = false) -> [AddressRange] {
        var wakes: [AddressRange] = []
        var next = 0 // the run being installed, and how far
        var at = runs.first?.units.lowerBound ?? 0
        while next < runs.count {
            if forFault { faultWaitsForLock.add(1, ordering: .relaxed) }
            wakes += lock.withLock { state in
                if forFault { faultWaitsForLock.subtract(1, ordering: .relaxed) }
                var budget = installBatch
                var first = true
                while budget > 0 && next < runs.count && (first || forFault || faultWaitsForLock.load(ordering: .relaxed) == 0) {
                    first = false
                    let run = runs[next]
                    let batch = at..<min(run.units.upperBound, at + budget)
                    let wanted = state.pages.accept(batch)
                    let accepted = wanted.reduce(0) { $0 + $1.count }
                    state.report.duplicatePages += batch.count - accepted
                    state.report.arrivals[arrival] += accepted
                    for part in wanted {
                        install(part, from: run.source.map { .bytes($0 + (part.lowerBound - run.units.lowerBound) * unit) } ?? .zeros, &state)
                    }
                    budget -= batch.count
                    at = batch.upperBound
                    if at == run.units.upperBound {
                        next += 1
                        if next < runs.count { at = runs[next].units.lowerBound }
                    }
                }
                return state.takeWakes()
            }
        }
        return wakes
    }

    /// Installs region pages `run` from `source`, recording latencies. Under the lock.
    func install(_ run: Range<Int>, from source: PageSource, _ state: inout State) {
        let deferWake = state.faults.waits(on: run)
        for (address, pages) in mappings.destinations(of: run) {
            if deferWake { state.pendingWakes.append(AddressRange(start: address, length: UInt64(pages.count * unit))) }
            var done = 0
            while done < pages.count {
                let at = address + UInt64(done * unit)
                let rest = pages.lowerBound + done..<pages.upperBound
                let outcome: InstallOutcome
                let tried: Int
                do {
                    switch source {
                    case .bytes(let bytes):
                        tried = rest.count
                        outcome = try uffd.copy(to: at, from: bytes + (rest.lowerBound - run.lowerBound) * unit,
                                                length: UInt64(tried * unit), dontWake: deferWake)
                    case .zeros where installer.zeroPageWorks:
                        tried = rest.count
                        do {
                            outcome = try uffd.zeroPage(AddressRange(start: at, length: UInt64(tried * unit)), dontWake: deferWake)
                        } catch let e where e.errno == .invalidArgument {
                            // UFFDIO_ZEROPAGE is for anonymous memory only: copies of zeros from now on.
                            installer.zeroPageWorks = false
                            continue
                        }
                    case .zeros:
                        tried = 1
                        outcome = try uffd.copy(to: at, from: installer.zeroUnit, length: UInt64(unit), dontWake: deferWake)
                    }
                } catch {
                    state.fail(.kernel(error))
                    return
                }
                done += settle(outcome, rest.lowerBound..<rest.lowerBound + tried, &state)
            }
        }
        switch source {
        case .bytes: state.report.installedPages += run.count
        case .zeros:
            state.pages.zeroFilled(run)
            state.report.zeroPages += run.count
        }
        let waits = state.faults.settle(run, at: monotonicNanoseconds())
        state.report.faultLatencies += waits
        // The counts reach the progress once per fault-loop pass (see faultLoop); only the
        // latencies, which the report keeps as samples, are recorded here.
        if let progress = configuration.progress {
            for w in waits { progress.faultLatency.record(nanoseconds: w) }
        }
    }

    /// Applies an install outcome to the pages tried; returns how many pages it dealt with.
    private func settle(_ outcome: InstallOutcome, _ pages: Range<Int>, _ state: inout State) -> Int {
        switch outcome {
        case .installed(let bytes):
            return max(1, Int(bytes) / unit)
        case .alreadyPresent(let before):
            // The page after `before` bytes is present (it arrived another way): skip it, wake
            // anyone waiting on it.
            let present = pages.lowerBound + Int(before) / unit
            wake(present..<present + 1)
            return Int(before) / unit + 1
        case .retry(let before):
            // The workload's mappings are changing (an event is pending): the rest goes back to
            // missing and is requested again after the event is read. Its waiters are woken so
            // they fault again: their fault events were consumed, and nothing else would wake
            // them (a zero install for a page believed resident records no pending fault).
            let rest = pages.lowerBound + Int(before) / unit..<pages.upperBound
            state.pages.invalidate(rest)
            state.refetch.insert(rest)
            wake(rest)
            return pages.count
        case .targetGone:
            state.fail(.workloadGone)
            return pages.count
        }
    }

    func wakeAll(_ ranges: [AddressRange]) {
        for r in ranges { try? uffd.wake(r) }
    }

    func wake(_ run: Range<Int>) {
        for (address, pages) in mappings.destinations(of: run) {
            try? uffd.wake(AddressRange(start: address, length: UInt64(pages.count * unit)))
        }
    }

    /// When the migration fails: every page not yet local is poisoned, so the workload gets
    /// SIGBUS on it instead of zeros or a hang. Returns the pages poisoned.
    @discardableResult
    func poisonOutstanding() -> Int {
        let poisoned = lock.withLock { state -> Int in
            var poisoned = 0
            for run in state.pages.outstandingRuns() {
                for (address, pages) in mappings.destinations(of: run) {
                    if case .installed? = try? uffd.poison(AddressRange(start: address, length: UInt64(pages.count * unit))) {
                        poisoned += pages.count
                    }
                }
            }
            return poisoned
        }
        // Wake every waiter, also those on pages that were local: each faults again and either
        // finds its page or gets SIGBUS; none sleeps on after this daemon is gone.
        for s in mappings.spans { try? uffd.wake(AddressRange(start: s.base, length: s.size)) }
        return poisoned
    }
}
