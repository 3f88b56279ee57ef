import PagerKernel
import PagerTransport
import PagerWire

extension PageSender {
    /// With the sparse encoding (§4.8): the range goes in windows of `step` bytes, each window
    /// one frame whatever its mix of data and zero pages: raw when all of it is data, sparse
    /// (a page map and the data pages only) when it mixes, zero when it has no data. A hole
    /// that covers a whole window or more goes as one zero frame, however long. Per frame,
    /// not per run: with every 16th page a hole and every 16th page zero (the tests' files),
    /// runs between zeros made four frames, four install calls and four wake-ups per 64 KiB.
    /// Returns the bytes sent as data.
    func sendWindows(_ region: ServedRegion, offset: UInt64, length: UInt64, requestID: UInt32, flags: PageDataHeader.Flags,
                     step: UInt64) throws -> UInt64 {
        var sent: UInt64 = 0, zero: UInt64 = 0
        var runs = region.extentRuns(offset: offset, length: length)[...]
        var at = offset
        let end = offset + length
        while at < end {
            // A hole from here to at least a window's end: one zero frame up to where it ends.
            if let first = runs.first, first.hole, first.range.upperBound - at >= min(step, end - at) {
                try channel.sendPageData(PageDataHeader(requestID: requestID, region: region.id, offset: at,
                                                        length: first.range.upperBound - at, flags: flags, encoding: .zero), data: nil)
                zero += first.range.upperBound - at
                at = first.range.upperBound
                runs = runs.dropFirst()
                continue
            }
            let windowEnd = min(end, at + step)
            var frame = WindowFrame(offset: at, length: windowEnd - at)
            while at < windowEnd, let run = runs.first {
                let pieceEnd = min(run.range.upperBound, windowEnd)
                if run.hole {
                    frame.zeros(pages: Int(pieceEnd - at) / 4096)
                } else {
                    // Each run of the window is read where the window's bytes go in the scratch
                    // buffer, so the earlier runs' bytes stay valid until the frame is sent.
                    let bytes: UnsafeRawBufferPointer
                    do {
                        bytes = try region.bytes(offset: at, length: pieceEnd - at, scratch: scratch + Int(at - frame.offset))
                    } catch {
                        throw SessionError.refuse(.ioError, "cannot read region \(region.id) at \(hex(at))+\(hex(pieceEnd - at)): \(error)")
                    }
                    for piece in zeroRuns(bytes, pageSize: region.pageSize) {
                        if piece.zero {
                            frame.zeros(pages: piece.range.count / 4096)
                        } else {
                            frame.data(UnsafeRawBufferPointer(rebasing: bytes[piece.range]))
                        }
                    }
                }
                at = pieceEnd
                if pieceEnd == run.range.upperBound { runs = runs.dropFirst() } else { runs[runs.startIndex].range = pieceEnd..<run.range.upperBound }
            }
            let header = frame.header(requestID: requestID, region: region.id, flags: flags)
            let sums = checksums && header.encoding != .zero ? frame.segments.flatMap { pageChecksums($0) ?? [] } : nil
            try channel.sendPageData(header, checksums: sums, segments: header.encoding == .zero ? [] : frame.segments)
            sent += UInt64(frame.dataPages) * 4096
            zero += frame.length - UInt64(frame.dataPages) * 4096
        }
        counters.bytesSent.add(sent, ordering: .relaxed)
        counters.zeroBytes.add(zero, ordering: .relaxed)
        return sent
    }
}

/// One window's frame as it is built: which 4 KiB pages carry data (the page map) and the
/// data's bytes, contiguous pieces merged into one segment.
struct WindowFrame {
    let offset: UInt64
    let length: UInt64
    private(set) var map: [UInt64]
    private(set) var segments: [UnsafeRawBufferPointer] = []
    private(set) var dataPages = 0
    private var page = 0

    init(offset: UInt64, length: UInt64) {
        self.offset = offset
        self.length = length
        map = Array(repeating: 0, count: (Int(length / 4096) + 63) / 64)
    }

    mutating func zeros(pages: Int) { page += pages }

    mutating func data(_ bytes: UnsafeRawBufferPointer) {
        let pages = bytes.count / 4096
        for p in page..<page + pages { map[p / 64] |= 1 << UInt64(p % 64) }
        page += pages
        dataPages += pages
        if let last = segments.last, last.baseAddress! + last.count == bytes.baseAddress! {
            segments[segments.count - 1] = UnsafeRawBufferPointer(start: last.baseAddress, count: last.count + bytes.count)
        } else {
            segments.append(bytes)
        }
    }

    /// Raw when every page is data, zero when none is, sparse otherwise.
    func header(requestID: UInt32, region: UInt32, flags: PageDataHeader.Flags) -> PageDataHeader {
        let pages = Int(length / 4096)
        let encoding: PageDataHeader.Encoding = dataPages == pages ? .raw : dataPages == 0 ? .zero : .sparse
        return PageDataHeader(requestID: requestID, region: region, offset: offset, length: length, flags: flags, encoding: encoding,
                              pageMap: encoding == .sparse ? map : nil)
    }
}
