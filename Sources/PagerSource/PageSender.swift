import PagerKernel
import PagerTransport
import PagerWire
import Synchronization

/// Turns ranges of a region into PAGE_DATA frames on one channel: holes (from the file's
/// extents) and all-zero pages as ZERO frames, data in frames of whole pages, with per-4 KiB
/// CRC-32C when the session asked for checksums. Owns the buffer that another process's
/// memory is read into; one per connection thread.
final class PageSender {
    /// The largest data frame sent: the scratch buffer for another process's memory holds one.
    static let maxChunk = 4 << 20

    let channel: any FrameConnection
    let checksums: Bool
    /// The destination accepts the sparse encoding: data and zero pages in one frame.
    let sparse: Bool
    let counters: SessionCounters
    let scratch: UnsafeMutableRawPointer

    init(channel: any FrameConnection, session: SourceSession) {
        self.channel = channel
        checksums = session.features.contains(.checksums)
        sparse = session.features.contains(.sparse)
        counters = session.counters
        // Page-aligned: process_vm_readv into it, and frames sent from it, are whole pages.
        scratch = UnsafeMutableRawPointer.allocate(byteCount: Self.maxChunk, alignment: 4096)
    }

    deinit { scratch.deallocate() }

    /// Sends `[offset, offset+length)` of `region` in frames of at most `chunk` bytes (whole
    /// pages). Returns the bytes sent as data.
    func send(_ region: ServedRegion, offset: UInt64, length: UInt64, requestID: UInt32, flags: PageDataHeader.Flags,
              chunk: Int) throws -> UInt64 {
        let step = UInt64(max(region.pageSize, min(chunk, Self.maxChunk) / region.pageSize * region.pageSize))
        if sparse { return try sendWindows(region, offset: offset, length: length, requestID: requestID, flags: flags, step: step) }
        var sent: UInt64 = 0, zero: UInt64 = 0
        func sendZero(_ range: Range<UInt64>) throws(ChannelError) {
            try channel.sendPageData(PageDataHeader(requestID: requestID, region: region.id, offset: range.lowerBound,
                                                    length: range.upperBound - range.lowerBound, flags: flags, encoding: .zero), data: nil)
            zero += range.upperBound - range.lowerBound
        }
        for run in region.extentRuns(offset: offset, length: length) {
            if run.hole {
                try sendZero(run.range)
                continue
            }
            var at = run.range.lowerBound
            while at < run.range.upperBound {
                let n = min(step, run.range.upperBound - at)
                let bytes: UnsafeRawBufferPointer
                do { bytes = try region.bytes(offset: at, length: n, scratch: scratch) } catch {
                    throw SessionError.refuse(.ioError, "cannot read region \(region.id) at \(hex(at))+\(hex(n)): \(error)")
                }
                for piece in zeroRuns(bytes, pageSize: region.pageSize) {
                    let pieceOffset = at + UInt64(piece.range.lowerBound)
                    if piece.zero {
                        try sendZero(pieceOffset..<pieceOffset + UInt64(piece.range.count))
                        continue
                    }
                    let data = UnsafeRawBufferPointer(rebasing: bytes[piece.range])
                    try channel.sendPageData(PageDataHeader(requestID: requestID, region: region.id, offset: pieceOffset, length: UInt64(data.count),
                                                            flags: flags, encoding: .raw), checksums: pageChecksums(data), data: data)
                    sent += UInt64(data.count)
                }
                at += n
            }
        }
        counters.bytesSent.add(sent, ordering: .relaxed)
        counters.zeroBytes.add(zero, ordering: .relaxed)
        return sent
    }

    /// CRC-32C of every 4 KiB of `data`, if the session asked for checksums.
    func pageChecksums(_ data: UnsafeRawBufferPointer) -> [UInt32]? {
        guard checksums else { return nil }
        return stride(from: 0, to: data.count, by: 4096).map { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: data[$0..<$0 + 4096])) }
    }
}

/// Splits `bytes` (whole pages of `pageSize`) into maximal runs of all-zero pages and of
/// data pages, as byte offsets into `bytes`.
func zeroRuns(_ bytes: UnsafeRawBufferPointer, pageSize: Int) -> [(range: Range<Int>, zero: Bool)] {
    var result: [(range: Range<Int>, zero: Bool)] = []
    var at = 0
    while at < bytes.count {
        let zero = isZeroPage(bytes.baseAddress! + at, pageSize)
        if let last = result.last, last.zero == zero {
            result[result.count - 1].range = last.range.lowerBound..<at + pageSize
        } else {
            result.append((at..<at + pageSize, zero))
        }
        at += pageSize
    }
    return result
}

private func isZeroPage(_ page: UnsafeRawPointer, _ pageSize: Int) -> Bool {
    let words = page.assumingMemoryBound(to: UInt64.self)
    // Most data pages have a non-zero first word: decide on one cache line when possible.
    if words[0] != 0 { return false }
    var acc: UInt64 = 0
    for i in 0..<pageSize / 8 {
        acc |= words[i]
        if i & 63 == 63 && acc != 0 { return false }
    }
    return acc == 0
}
