import PagerTransport
import PagerWire

extension PageSender {
    /// The push of `[offset, offset+length)` of `region` left to the destination's READs
    /// (PUSH_READ, §4.11a): a PUSH_READ per `step` bytes of data, holes as zero PAGE_DATA as
    /// ever. Nothing of the data is read here. Returns the data bytes left to READs.
    func offerReads(_ region: ServedRegion, offset: UInt64, length: UInt64, step: UInt64) throws -> UInt64 {
        let step = max(UInt64(region.pageSize), min(step, UInt64(WireLimits.pushReadBytes)) / UInt64(region.pageSize) * UInt64(region.pageSize))
        var offered: UInt64 = 0, zero: UInt64 = 0
        for run in region.extentRuns(offset: offset, length: length) {
            if run.hole {
                try channel.sendPageData(PageDataHeader(requestID: 0, region: region.id, offset: run.range.lowerBound,
                                                        length: run.range.upperBound - run.range.lowerBound, flags: .push, encoding: .zero), data: nil)
                zero += run.range.upperBound - run.range.lowerBound
                continue
            }
            for at in stride(from: run.range.lowerBound, to: run.range.upperBound, by: Int(step)) {
                let n = min(step, run.range.upperBound - at)
                try channel.send(.pushRead(region: region.id, offset: at, length: UInt32(n)))
                offered += n
            }
        }
        counters.readBytes.add(offered, ordering: .relaxed)
        counters.zeroBytes.add(zero, ordering: .relaxed)
        return offered
    }
}
