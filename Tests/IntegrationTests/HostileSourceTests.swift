import Glibc
import PagerKernel
import PagerTransport
import PagerWire
import Testing

/// One way a source can lie to a destination, and how the destination must name it.
struct HostileCase: Sendable, CustomTestStringConvertible {
    var name: String
    var script: ScriptedSource.Script
    var destExtra: [String] = []
    /// Texts the destination's output must hold: its words for the problem.
    var expect: [String]
    /// Pages the source sent correctly before the hostile frame: they must keep their data.
    var installed = 0

    var testDescription: String { name }
}

/// The workload's memory (64 MiB of 4 KiB pages) and the region that matches it.
private let workloadMiB = 64
private let workloadPages = workloadMiB << 8
private let seed: UInt64 = 1
private func region(id: UInt32 = 1, shift: UInt8 = 12, length: UInt64 = UInt64(workloadMiB) << 20, name: String = "vm.ram") -> RegionDescriptor {
    RegionDescriptor(id: id, pageShift: shift, length: length, name: name)
}

/// A good start (16 pages of the right data, pushed), then `frame`.
private func afterGoodPages(_ name: String, _ frame: ScriptedSource.Step, destExtra: [String] = [], expect: [String]) -> HostileCase {
    HostileCase(name: name, script: .init(regions: [region()], push: [.message(ScriptedSource.patternPages(0..<16, seed: seed)), frame]),
                destExtra: destExtra, expect: expect, installed: 16)
}

private func pageData(region: UInt32 = 1, offset: UInt64, length: UInt64, encoding: PageData.Encoding = .raw, checksums: [UInt32]? = nil) -> ScriptedSource.Step {
    .message(.pageData(PageData(requestID: 0, region: region, offset: offset, length: length, flags: .push, encoding: encoding,
                                checksums: checksums, data: encoding == .raw ? [UInt8](repeating: 0xA5, count: Int(length)) : [])))
}

/// INVALIDATE of one range whose range_count field says `count`.
private func invalidate(offset: UInt64, length: UInt64, rangeCount count: UInt32? = nil) -> ScriptedSource.Step {
    var bytes = Message.invalidate(Invalidate(sequence: 1, region: 1, ranges: [PageRange(offset: offset, length: length)])).encoded()
    if let count { withUnsafeBytes(of: count.bigEndian) { bytes.replaceSubrange(16..<20, with: $0) } }
    return .bytes(bytes)
}

private let garbage = Array("GET / HTTP/1.1\r\nHost: pager\r\n\r\n".utf8)

let hostileCases: [HostileCase] = [
    HostileCase(name: "REGION length 2^63", script: .init(regions: [region(length: 1 << 63, name: "huge")]),
                expect: ["region 1 \"huge\" is 9223372036854775808 bytes", "at most 140737488355328"]),
    HostileCase(name: "REGION length 0", script: .init(regions: [region(length: 0)]),
                expect: ["REGION field length is 0"]),
    HostileCase(name: "REGION length not a multiple of its page size", script: .init(regions: [region(length: (64 << 20) + 512)]),
                expect: ["REGION field length is 67109376, must be a nonzero multiple of the page size 4096"]),
    HostileCase(name: "REGION page_shift 13", script: .init(regions: [region(shift: 13)]),
                expect: ["REGION field page_shift is 13"]),
    HostileCase(name: "WELCOME announces 4,294,967,280 regions", script: .init(regions: [region()], regionCount: 4_294_967_280),
                expect: ["the source announces 4294967280 regions; at most 1024 are accepted"]),
    HostileCase(name: "2000 regions announced and sent",
                script: .init(regions: (1...2000).map { region(id: UInt32($0), name: "r\($0)") }),
                destExtra: ["--region", "1"], expect: ["the source announces 2000 regions; at most 1024 are accepted"]),
    HostileCase(name: "two regions with the same id",
                script: .init(regions: [region(name: "a"), region(name: "b")]),
                destExtra: ["--region", "b"], expect: ["region id 1 is announced twice (\"a\" and \"b\")"]),
    HostileCase(name: "a region larger than the workload's memory", script: .init(regions: [region(length: 128 << 20, name: "big")]),
                expect: ["region 1 \"big\" is 134217728 bytes", "67108864"]),
    HostileCase(name: "a region smaller than the workload's memory", script: .init(regions: [region(length: 1 << 20, name: "small")]),
                expect: ["region 1 \"small\" is 1048576 bytes", "67108864"]),
    HostileCase(name: "garbage bytes after WELCOME", script: .init(regions: [region()], afterWelcome: garbage),
                expect: ["malformed frame", "unknown message type 0x4745"]),
    afterGoodPages("PAGE_DATA beyond the region's end", pageData(offset: 64 << 20, length: 4096),
                   expect: ["PAGE_DATA for region 1 at 0x4000000+0x1000 is not in region 1 (0x4000000 bytes)"]),
    afterGoodPages("ZERO covering 1 TiB", pageData(offset: 0, length: 1 << 40, encoding: .zero),
                   expect: ["PAGE_DATA for region 1 at 0x0+0x10000000000 is not in region 1"]),
    afterGoodPages("PAGE_DATA at a misaligned offset", pageData(offset: 0x10800, length: 4096),
                   expect: ["PAGE_DATA field offset 0x10800 is not a multiple of 4096"]),
    afterGoodPages("PAGE_DATA with a bad checksum", pageData(offset: 0x10000, length: 4096, checksums: [0xBAD]),
                   destExtra: ["--checksums"], expect: ["page at region 1 offset 0x10000", "failed its CRC-32C check"]),
    afterGoodPages("sparse PAGE_DATA although sparse was not negotiated",
                   .message(.pageData(PageData(requestID: 0, region: 1, offset: 0x10000, length: 8192, flags: .push, encoding: .sparse,
                                               pageMap: [1], data: [UInt8](repeating: 0xA5, count: 4096)))),
                   expect: ["sparse PAGE_DATA (encoding 3) without the sparse feature"]),
    afterGoodPages("PAGE_DATA with checksums although checksums were not negotiated",
                   pageData(offset: 0x10000, length: 4096, checksums: [0]),
                   expect: ["PAGE_DATA with checksums without the checksums feature"]),
    afterGoodPages("PAGE_DATA for a region never announced", pageData(region: 9, offset: 0x10000, length: 4096),
                   expect: ["PAGE_DATA for region 9, which the source did not announce"]),
    afterGoodPages("INVALIDATE unasked (invalidation not negotiated)", invalidate(offset: 0, length: 4096),
                   expect: ["unexpected INVALIDATE from the source"]),
    afterGoodPages("INVALIDATE whose range_count is above what the payload holds", invalidate(offset: 0, length: 4096, rangeCount: 5),
                   expect: ["INVALIDATE field range_count is 5, must be 1 (the ranges in the payload)"]),
    afterGoodPages("INVALIDATE beyond the region", invalidate(offset: 1 << 40, length: 4096),
                   expect: ["unexpected INVALIDATE from the source"]),
    afterGoodPages("ERROR with an unknown code, ending the session",
                   .message(.error(ProtocolError(code: ErrorCode(rawValue: 999), requestID: 0, message: "scripted nonsense"))),
                   expect: ["reported code-999: scripted nonsense"]),
    afterGoodPages("ERROR with an unknown code for a request never sent",
                   .message(.error(ProtocolError(code: ErrorCode(rawValue: 999), requestID: 77, message: "scripted nonsense"))),
                   expect: ["request 77: code-999: scripted nonsense"]),
    afterGoodPages("REGION again in the middle of the session", .message(.region(region(id: 2, name: "late"))),
                   expect: ["unexpected REGION from the source"]),
    afterGoodPages("garbage bytes after pages", .bytes(garbage), expect: ["malformed frame", "unknown message type 0x4745"]),
]

/// A hostile source, written from the spec: whatever it sends, `pagerd dest` (holding a
/// workload's memory) must not crash nor allocate by what it is told, must say what was wrong,
/// and must leave the workload every page it got right and SIGBUS on the rest, never zeros.
@Suite("A hostile source", .serialized,
       .enabled(if: isRoot, "needs root for userfaultfd"),
       .enabled(if: Binaries.present, Comment(rawValue: Binaries.missing)))
struct HostileSourceTests {
    @Test("the destination names the problem, and the workload reads no zeros", arguments: hostileCases)
    func hostile(_ c: HostileCase) throws {
        let source = try ScriptedSource(.script(c.script))
        let scratch = Scratch()
        let socket = scratch.file("uffd.sock")
        // A stall timeout, so that a destination that waits for a source that will say nothing
        // more (the old behaviour for some cases) ends within the test.
        let dest = try ChildProcess(Binaries.pagerd, ["dest", "--connect", "\(source.endpoint)", "--uffd-socket", socket, "--once",
                                                      "--stall-timeout-ms", "3000", "--key-file", scratch.keyFile] + c.destExtra,
                                    outputPath: scratch.file("dest.log"))
        try waitFor(dest, toPrint: "waiting for userfaultfd handoffs")
        // The workload touches nothing until the pager closes the handoff connection, then says
        // which pages are present (and checks them), poisoned, or neither, then reads them all.
        let workload = try ChildProcess(Binaries.workload, ["run", "--socket", socket, "--size-mib", "\(workloadMiB)", "--access", "none",
                                                            "--seed", "\(seed)", "--report-residency"],
                                        outputPath: scratch.file("workload.log"))
        let w = workload.wait(timeoutMilliseconds: 60_000)
        let d = dest.wait(timeoutMilliseconds: 30_000)
        if w == nil { workload.signal(SIGKILL) }
        if d == nil { dest.signal(SIGKILL) }
        let (dOut, wOut) = (dest.output, workload.output)

        // (a) It fails, saying what the source did wrong.
        #expect(d != nil && d != 0, "dest status \(String(describing: d)): \(dOut)")
        for text in c.expect { #expect(dOut.contains(text), "expected \"\(text)\" in: \(dOut)") }
        // (b) It did not crash, nor try to allocate by the source's numbers.
        #expect(d.map { $0 < 128 } ?? false, "dest ended by signal \((d ?? 0) - 128): \(dOut)")
        for crash in ["Fatal error", "failed to allocate", "fatal signal", "Crash"] {
            #expect(!dOut.contains(crash), "\(dOut)")
        }
        #expect(dOut.contains("pages not yet local were poisoned") || dOut.contains("were poisoned"), "\(dOut)")
        // (c) The workload got what was sent right, and SIGBUS instead of every other page.
        let expected = "present=\(c.installed) present-mismatches=0 poisoned=\(workloadPages - c.installed) absent=0"
        #expect(wOut.contains(expected), "expected \"\(expected)\" in: \(wOut)\ndest: \(dOut)")
        #expect(w == 128 + SIGBUS, "workload status \(String(describing: w)): \(wOut)")
        #expect(!wOut.contains("workload: ok") && !wOut.contains("CORRUPT"), "\(wOut)")
    }
}
