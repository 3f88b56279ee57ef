import PagerRDMA
import Testing

@Suite("RDMA: the push's backlog of ranges to READ")
struct PushBacklogTests {
    @Test("in order, each key once; what is put back comes first again; removeAll empties it")
    func order() {
        var backlog = PushBacklog<Int, Int>(key: { $0 })
        for i in 0..<10 { backlog.append(i) }
        let again = backlog.append(3)
        #expect(!again, "a range queued already is not queued twice")
        let front = backlog.takeFront(4)
        #expect(front == [0, 1, 2, 3])
        #expect(!backlog.contains(2) && backlog.contains(4) && backlog.count == 6)
        backlog.putBack([2, 3])
        #expect(backlog.contains(2) && backlog.count == 8)
        let next = backlog.takeFront(3)
        #expect(next == [2, 3, 4])
        let requeued = backlog.append(0)
        #expect(requeued, "taken, so it may be queued again")
        let all = backlog.removeAll()
        #expect(all == [5, 6, 7, 8, 9, 0])
        #expect(backlog.isEmpty && backlog.count == 0 && !backlog.contains(5))
    }

    @Test("a whole region's ranges taken a chain at a time: every one once, in order, whatever is put back")
    func manyChains() {
        var backlog = PushBacklog<Int, Int>(key: { $0 })
        let n = 100_000
        for i in 0..<n { backlog.append(i) }
        var posted: [Int] = []
        var round = 0
        while !backlog.isEmpty {
            let chain = backlog.takeFront(16)
            // Every third chain its last five do not fit and go back.
            let back = round % 3 == 0 && chain.count > 5 ? Array(chain.suffix(5)) : []
            posted += chain.dropLast(back.count)
            backlog.putBack(back)
            round += 1
        }
        #expect(posted == Array(0..<n))
    }
}
