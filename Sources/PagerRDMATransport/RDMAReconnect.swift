#if RDMA
import PagerKernel
import PagerRDMA

extension RDMAPageReads {
    /// Reconnects needed in a row whose queue pair brought nothing before it went: then the
    /// source (or its device) does not serve READs any more, and every page goes over TCP.
    static let fruitlessReconnectLimit = 5

    /// Connects a new queue pair after the last one failed or went (every request meanwhile
    /// goes over TCP): a new admission request with a new nonce, the pools registered in the
    /// new domain, a reader that uses only the keys granted since this began (the source sends
    /// them after each admission: a removed and returned device has new keys). Tries every
    /// 100 ms, backing off to 2 s, until it succeeds or the reads are stopped. False when
    /// stopped, or given up (``fruitlessReconnectLimit``).
    func reconnect() -> Bool {
        if state.withLock({ $0.stopped }) { return false }
        // Everything of the old queue pair goes first: a removed device is gone only once no
        // process holds anything of it (its return waits for that).
        let brought = state.withLock { state -> Int in
            let brought = state.reader?.readsCompleted ?? 0
            state.readsBefore += brought
            state.bytesBefore += state.reader?.bytesRead ?? 0
            state.reader = nil
            state.dead = true
            state.keys = RemoteKeys()
            return brought
        }
        // A DEVICE_REMOVAL may follow the DISCONNECTED that ended the queue pair: read, it lets
        // librdmacm close the removed device (which cannot come back before).
        _ = connection?.awaitDeviceRemoval(nanoseconds: 200_000_000)
        registrations = []
        connection = nil
        fruitless = brought > 0 ? 0 : fruitless + 1
        if fruitless > Self.fruitlessReconnectLimit {
            logger.error("RDMA: \(fruitless - 1) \(channel) queue pairs in a row went before their first READ completed: giving up, every page comes over TCP")
            return false
        }
        var delay: UInt64 = 100, attempts = 0, logged = false
        while !state.withLock({ $0.stopped }) {
            // The backoff, ended at once by a stop.
            if stopSignal.wait(until: { $0 }, deadline: monotonicNanoseconds() + delay * 1_000_000) { break }
            attempts += 1
            do {
                let connection = try Self.connect(peer, channel, timeoutMilliseconds: 2_000)
                let (reader, registrations) = try stage(on: connection)
                self.registrations = registrations
                self.connection = connection
                state.withLock { state in
                    reader.keys = state.keys
                    state.reader = reader
                    state.dead = false
                }
                logger.info("RDMA: a new \(channel) queue pair is in after \(attempts) attempt(s): READs again")
                return true
            } catch {
                if !logged { logger.warning("RDMA: no new \(channel) queue pair yet (\(error)); trying again, every page over TCP meanwhile") }
                logged = true
                delay = min(delay * 2, 2_000)
            }
        }
        return false
    }
}
#endif
