/// The push's ranges taken and not yet posted, in order, each at most once: the front is taken
/// by moving an index (a whole region's PUSH_READs can be queued at once, and every completion
/// posts from the front), and what could not be posted goes back in front of the rest.
public struct PushBacklog<Item, Key: Hashable> {
    private var items: [Item] = []
    private var head = 0
    private var queued: Set<Key> = []
    private let key: (Item) -> Key

    public init(key: @escaping (Item) -> Key) { self.key = key }

    public var isEmpty: Bool { head == items.count }
    public var count: Int { items.count - head }

    /// Whether an item with `item`'s key is queued.
    public func contains(_ item: Item) -> Bool { queued.contains(key(item)) }

    /// Queues `item` at the back; false (and nothing queued) when its key is queued already.
    @discardableResult
    public mutating func append(_ item: Item) -> Bool {
        guard queued.insert(key(item)).inserted else { return false }
        items.append(item)
        return true
    }

    /// Takes up to `n` items from the front.
    public mutating func takeFront(_ n: Int) -> [Item] {
        let taken = Array(items[head..<min(items.count, head + n)])
        head += taken.count
        for item in taken { queued.remove(key(item)) }
        compact()
        return taken
    }

    /// Puts `returned` (taken from the front, not posted) back in front, in their order.
    public mutating func putBack(_ returned: [Item]) {
        guard !returned.isEmpty else { return }
        if head >= returned.count {
            head -= returned.count
            items.replaceSubrange(head..<head + returned.count, with: returned)
        } else {
            items.replaceSubrange(0..<head, with: returned)
            head = 0
        }
        for item in returned { queued.insert(key(item)) }
    }

    /// Everything queued, in order; the backlog is empty after.
    public mutating func removeAll() -> [Item] {
        defer {
            items.removeAll()
            head = 0
            queued.removeAll()
        }
        return Array(items[head...])
    }

    /// Drops the taken front once it is most of the storage.
    private mutating func compact() {
        if head > 1024 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
    }
}
